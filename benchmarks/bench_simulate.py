"""Simulation speed and memory: simulated requests per wall second with a 64-device
cluster under the predlat policy (fine-rls predictor), memory against request count, and
the 64-device 10-million-request wall time (run with --full, else extrapolated from the
measured rate: the output says which). Prints a table and one JSON line.

    python benchmarks/bench_simulate.py [--devices 64] [--requests 50000]
        [--route round-robin] [--memory 2000,8000,32000] [--full] [--profile]
        [--no-predictor] [--jobs J]

--jobs J (J > 1, round-robin) also runs the same simulation split into J shards of its
devices in J worker processes (`predlat.sim.shard`: the merged result is the unsharded
one, exactly), timed whole from the command's side (starting the workers, building the
devices and every shard reading the request stream included), and prints its rate over
the one-process rate of the same invocation. The 10M figure then uses the sharded rate
(and --full runs it sharded).

--no-predictor gives every scheduler a stand-in forecaster that costs next to nothing
(`FixedSlowdownForecaster`: solo latency x a fixed slowdown per co-runner) in place of
the policy's predictor: the rate printed is then the ceiling that the rest (event loop,
simulated devices, scheduler, metrics) sets, whatever the predictor costs. Its
decisions are the stand-in's, so only its speed means anything.

--profile runs the measured simulation under cProfile and prints each part's share of
its own time (the predictor, the scheduler, the simulator and its devices, the rest):
which code bounds the rate. Profiling slows every call, small ones most, so shares are
indicative and the rate printed with it is not the unprofiled one.

Figures on a shared machine depend on its load; rerun to see the spread.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import resource
import time
from collections import Counter

from predlat.experiments.parallel import Workers
from predlat.scheduling.forecasting import FixedSlowdownForecaster
from predlat.sim.arrivals import synthetic_requests
from predlat.sim.cluster import build_cluster
from predlat.sim.device_file import load_device
from predlat.sim.shard import ShardRun, blocks, merge, run_block
from predlat.traces.collect import device_capacity


def workload(devices: int, requests: int, load: float):
    """The `gpu` preset and the seeded request stream at `load` x the cluster's capacity."""
    spec = load_device("gpu")
    models = sorted(spec.models)
    cap = devices * device_capacity(spec.profile(), models, spec.slots)
    reqs = synthetic_requests(
        dict.fromkeys(models, load * cap / len(models)),
        requests,
        lambda m: 10 * spec.models[m].latency(1),
        hp_frac=0.3,
    )
    return spec, reqs


def cluster(spec, devices: int, route: str, policy: str, only: range | None = None):
    """The benchmark's cluster of `spec` devices (or the block `only` of it)."""
    return build_cluster([spec], devices, policy, route=route, train_batches=100, only=only)


def run(
    devices: int, requests: int, route: str, policy: str, load: float, stand_in: bool = False
) -> tuple[int, float]:
    spec, reqs = workload(devices, requests, load)
    sim = cluster(spec, devices, route, policy)
    if stand_in:  # the rest's ceiling: forecasts cost next to nothing
        for s in sim.schedulers:  # (solo latencies cached, as the scheduler's own are)
            solo = functools.cache(s.profile.solo_latency)
            s.forecaster = FixedSlowdownForecaster(solo, 0.3, 1.2)
    stats, wall = sim.run_stream(reqs)
    return stats.requests, wall


def shard(
    devices: int, requests: int, route: str, policy: str, load: float, block: range
) -> ShardRun:
    """`run`'s simulation, only the devices of `block` (run in a worker process)."""
    spec, reqs = workload(devices, requests, load)
    return run_block(lambda b: cluster(spec, devices, route, policy, b), reqs, devices, block)


def run_sharded(
    devices: int, requests: int, route: str, policy: str, load: float, jobs: int
) -> tuple[int, float, list[float]]:
    """Requests simulated, the command-side wall time, and each shard's own."""
    t0 = time.perf_counter()
    with Workers(jobs) as workers:
        args = (devices, requests, route, policy, load)
        tasks = [(shard, (*args, b)) for b in blocks(devices, jobs)]
        parts = [p for _, p in workers.run(tasks)]
    wall = time.perf_counter() - t0
    return merge(parts).stats.requests, wall, [p.wall_s for p in parts]


# Parts of the code, by path: the first that matches a function's file names its part.
PARTS = (
    ("predictor", "predlat/predict/"),
    ("scheduler", "predlat/scheduling/"),
    ("simulator", "predlat/sim/"),
    ("simulator", "predlat/devices/simulated"),
    ("simulator", "predlat/devices/sim_law"),
    ("records", "predlat/traces/"),
)


def shares(profile: cProfile.Profile) -> dict[str, float]:
    """Each part's share of the profiled time: a function's own time goes to its part;
    builtins' to their callers' parts, in proportion to what each caller spent there."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def part(fn: tuple) -> str | None:
        return next((name for name, path in PARTS if path in fn[0]), None)

    out: Counter[str] = Counter()
    for fn, (_, _, own, _, callers) in stats.items():
        name = part(fn)
        if name is not None:
            out[name] += own
            continue
        spent = {c: v[2] for c, v in callers.items()}
        total = sum(spent.values())
        for c, v in spent.items() if total > 0 else ():
            out[part(c) or "other"] += own * v / total
        if total <= 0:
            out["other"] += own
    whole = sum(out.values()) or 1.0
    return {k: v / whole for k, v in out.most_common()}


def memory(devices: int, counts: list[int], route: str, policy: str) -> list[dict]:
    """The process's peak resident memory after runs of growing request counts, in
    order: if a run's memory grew with its requests, the peak would climb with them."""
    rows = []
    for n in sorted(counts):
        run(devices, n, route, policy, 0.7)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        rows.append({"requests": n, "peak_rss_mib": peak})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--route", default="round-robin")
    ap.add_argument("--policy", default="predlat")
    ap.add_argument("--load", type=float, default=0.7)
    ap.add_argument("--memory", default="1000,10000,50000", help="request counts ('' skips)")
    ap.add_argument("--memory-devices", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="run the 10-million-request case")
    ap.add_argument("--profile", action="store_true", help="time shares by part (cProfile)")
    ap.add_argument(
        "--no-predictor", action="store_true", help="a stand-in forecaster: the rest's ceiling"
    )
    ap.add_argument("--jobs", type=int, default=1, help="also run it in J shards (round-robin)")
    a = ap.parse_args()
    if a.jobs > 1 and (a.route != "round-robin" or a.no_predictor):
        ap.error("--jobs needs --route round-robin, without --no-predictor")
    profile = cProfile.Profile() if a.profile else None
    if profile is not None:
        profile.enable()
    n, wall = run(a.devices, a.requests, a.route, a.policy, a.load, a.no_predictor)
    part_shares = {}
    if profile is not None:
        profile.disable()
        part_shares = shares(profile)
        print(
            "share of profiled time: " + ", ".join(f"{k} {v:.0%}" for k, v in part_shares.items())
        )
    rate = n / wall
    policy = a.policy + (" (stand-in forecaster)" if a.no_predictor else "")
    print(
        f"{a.devices} devices, {policy}, route {a.route}, load {a.load:g}: "
        f"{n} requests in {wall:.1f} s = {rate:,.0f} simulated requests / wall s"
    )
    sharded: dict = {}
    if a.jobs > 1:
        n_j, wall_j, walls = run_sharded(a.devices, a.requests, a.route, a.policy, a.load, a.jobs)
        sharded = {"jobs": a.jobs, "requests": n_j, "wall_s": wall_j, "shard_wall_s": walls}
        sharded["simulated_requests_per_wall_s"] = n_j / wall_j
        print(
            f"the same in {a.jobs} shards: {n_j} requests in {wall_j:.1f} s = "
            f"{n_j / wall_j:,.0f} / wall s ({n_j / wall_j / rate:.2f}x one process; shards' "
            f"own walls {', '.join(f'{w:.1f}' for w in walls)} s)"
        )
        rate = n_j / wall_j
    mem = memory(a.memory_devices, [int(x) for x in a.memory.split(",") if x], a.route, a.policy)
    for row in mem:
        print(
            f"memory, {a.memory_devices} devices, {row['requests']:>8} requests: "
            f"process peak RSS {row['peak_rss_mib']:.1f} MiB"
        )
    if a.full:
        t0 = time.perf_counter()
        if a.jobs > 1:
            run_sharded(a.devices, 10_000_000, a.route, a.policy, a.load, a.jobs)
        else:
            run(a.devices, 10_000_000, a.route, a.policy, a.load)
        ten_m, how = time.perf_counter() - t0, "measured"
    else:
        ten_m, how = 10_000_000 / rate, "extrapolated"
    print(f"64-device 10M-request wall time: {ten_m:,.0f} s ({how})")
    print(
        json.dumps(
            {
                "devices": a.devices,
                "policy": a.policy,
                "no_predictor": a.no_predictor,
                "route": a.route,
                "requests": n,
                "wall_s": wall,
                "simulated_requests_per_wall_s": n / wall,
                "sharded": sharded,
                "memory": mem,
                "ten_million_wall_s": ten_m,
                "ten_million": how,
                "profiled_shares": part_shares,
            }
        )
    )


if __name__ == "__main__":
    main()
