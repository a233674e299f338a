"""predlat on Ray Serve: scale-out, the predicting router against Serve's default, the
router's own cost, the front door's added latency, and a replica killed under load.

    pip install -e ".[ray]"
    python benchmarks/bench_ray.py [--duration 4] [--heavy resnet] [--light roberta]
        [--phases 1,6,2,4,5] [--router-rate 60] [--router-repeats 1] [--out results.json]
        [--scale-models vgg,vit] [--scale-rows 4] [--scale-deadline-ms 600]

Everything runs on a local Ray instance this script starts (loopback only), each replica
one predlat runtime with 1 slot of 1 intra-op thread (a CPU slice). Phases:

1. capacity: open-loop Poisson load over both models at rising rates (falling, if the
   first fails), on 1 replica then 2 (predlat router); SLO capacity = the highest rate
   meeting >= 99% of high-priority and >= 95% of all deadlines (refusals count as
   misses), within the steps tried and `--refine` bisection steps after them. A rate
   that fails is run once more (another seed) and judged on both runs' requests
   together: one short run holds a few dozen high-priority requests, so a single
   late one fails it. A capacity the ladder never saw fail is only a lower bound: it
   prints as ">=", and no ratio is given from it. Prints the 2-vs-1 ratio, and at
   every rate the CPU milliseconds per request that went to
   the replicas, to this process (client, front door, router), to Ray's own processes
   and to anything else (Linux /proc): on a machine with as many cores as replicas, a
   second replica helps only as far as the work outside the replicas leaves it a core.
6. capacity as in 1, for compute-heavy requests (`--scale-models`, `--scale-rows` rows
   each, one deadline): where the device's work outweighs the per-request cost of the
   path through Ray, the ratio a second replica can reach on a small machine.
2. routers: the same 2 replicas, heavy + light model with tight deadlines, at one rate,
   routed by predlat's router and by Serve's default (power of two choices); with
   --router-repeats N, N such pairs on different seeds, alternating, and their means;
   and each replica's live forecast error (the mean relative error of its last 256
   batch forecasts, as it publishes it, and their median ratio of actual to forecast
   latency), for comparison with the simulated devices' (`bench_sim_routes.py`), where
   the routing rule wins.
3. routing decision time (the predicting router's choose_replicas), p50 / p99.
4. added latency (run first): sequential HTTP requests to the light model through `predlat serve`
   (one runtime, no Ray) and through the Ray front door (1 replica) over each transport
   to the replica (Serve's gRPC, the default; Ray actor calls), all up at once and asked
   in turn: p50 / p99 of each; and Ray Serve's own floor over each transport, a handle
   round trip to an echo deployment with the same inputs (what any Serve-hosted model
   pays before predlat does anything).
5. faults: load on 2 replicas, one replica process killed mid-run; every request must
   end exactly once, answered or refused with a reason.

Figures measured on a shared machine are contaminated by whatever else runs there.
"""

# ruff: noqa: E402  (Ray must be imported after use_loopback() below)
from __future__ import annotations

from predlat.cluster.local import use_loopback

use_loopback()  # before Ray is imported (predlat.cluster and ray_common import it)
import argparse
import json
import math
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from predlat.cluster.frontdoor import ClusterRuntime
from predlat.cluster.messages import DECISION_TIMES
from predlat.scheduling.outcome import RequestOutcome, summarize
from predlat.scheduling.request import Priority
from proc_cpu import cpu_by_group, ray_groups, snapshot
from ray_common import Cluster, inputs_for, ray, serve
from ray_latency import added_latency

HP_FRACTION = 0.3


def open_loop(
    runtime: ClusterRuntime,
    rate: float,
    duration: float,
    mix: dict[str, float],
    deadlines: dict[str, float],
    feeds: dict[str, dict[str, np.ndarray]],
    seed: int,
    on_half: Any = None,
) -> tuple[list[RequestOutcome], float]:
    """Poisson arrivals at `rate`/s for `duration` s; returns every outcome."""
    rng = np.random.default_rng(seed)
    models, weights = list(mix), np.asarray(list(mix.values()))
    weights = weights / weights.sum()
    futures, t0 = [], time.perf_counter()
    at, half_done = 0.0, False
    while at < duration:
        at += rng.exponential(1.0 / rate)
        model = models[rng.choice(len(models), p=weights)]
        prio = Priority.HIGH if rng.random() < HP_FRACTION else Priority.LOW
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if on_half is not None and not half_done and at >= duration / 2:
            half_done = True
            on_half()
        futures.append(
            runtime.submit(model, feeds[model], deadline_s=deadlines[model], priority=prio)
        )
    outcomes = [f.result(timeout=120) for f in futures]
    return outcomes, time.perf_counter() - t0


def meets_slo(s: dict[str, float]) -> bool:
    return s["hp_met"] >= 0.99 and s["met_frac"] >= 0.95


def capacity(args, replicas: int, feeds, deadlines, mix=None) -> tuple[float, bool, list]:
    """The rate ladder (x `--step-factor`) up to the first failing rate, then
    `--refine` bisection steps (geometric) between the last passing and first failing."""
    mix = mix or {args.heavy: 0.3, args.light: 0.7}
    cluster = Cluster(list(mix), replicas)
    group = ray_groups(os.getpid())
    rows: list[dict] = []

    def meets(rate: float, pooled: tuple[list, float] | None = None) -> bool:
        before = snapshot()
        outs, took = open_loop(
            cluster.runtime, rate, args.duration, mix, deadlines, feeds, len(rows)
        )
        spent = cpu_by_group(before, snapshot(), group)
        cpu_ms = {k: 1e3 * v / max(1, len(outs)) for k, v in sorted(spent.items())}  # this run's
        if pooled is not None:
            outs, took = pooled[0] + outs, pooled[1] + took
        s = summarize(outs, took)
        rows.append({"replicas": replicas, "rate": rate, **s, "cpu_ms_per_request": cpu_ms})
        ok = meets_slo(s)
        print(
            f"  {replicas} replica(s) {rate:6.1f} req/s: hp met {s['hp_met']:.3f}, "
            f"all met {s['met_frac']:.3f}, goodput {s['goodput_rps']:.1f}/s "
            f"{'ok' if ok else 'FAIL'}{'' if pooled is None else ' (both runs)'}; CPU ms/request: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu_ms.items()),
            flush=True,
        )
        if not ok and pooled is None:  # confirmed on twice the requests, or not
            return meets(rate, (outs, took))
        return ok

    best, failed, rate = 0.0, 0.0, args.start_rate
    try:
        for _ in range(args.steps):
            if meets(rate):
                best, rate = rate, rate * args.step_factor
            elif best > 0:  # passed below, failed here: the capacity is bracketed
                failed = rate
                break
            else:  # failed at the first rates: search downwards
                rate /= args.step_factor
        for _ in range(args.refine if best > 0 and failed > 0 else 0):
            mid = math.sqrt(best * failed)
            best, failed = (mid, failed) if meets(mid) else (best, mid)
    finally:
        cluster.close()
    return best, failed > 0, rows


def scale_out(args, label: str, feeds, deadlines, mix=None) -> dict[str, Any]:
    one, one_found, rows1 = capacity(args, 1, feeds, deadlines, mix)
    two, two_found, rows2 = capacity(args, 2, feeds, deadlines, mix)
    found = one_found and two_found
    ratio = two / one if one and found else float("nan")
    print(
        f"  {label}: 1 replica {'' if one_found else '>= '}{one:.1f} req/s, 2 replicas "
        f"{'' if two_found else '>= '}{two:.1f} req/s: "
        + (f"{ratio:.2f}x" if found else "no ratio (a capacity above the rates tried)")
    )
    return {
        "one": one,
        "two": two,
        "ratio": ratio,
        "bracketed": {"one": one_found, "two": two_found},
        "points": rows1 + rows2,
    }


def replica_forecast_errors(cluster: Cluster) -> list[tuple[float | None, float | None]]:
    """Each replica's published mean relative error of its recent batch forecasts and
    their median ratio of actual to forecast latency (above 1: they run late), asked
    of every replica actor of the cluster's app (through the handle, a router would pick
    one replica, often the same one). The actors are found by Serve's naming of them
    (SERVE_REPLICA::<app>#...), and asked with the method Serve's own routers poll."""
    errors = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{cluster.app}#"):
            replica = ray.get_actor(actor["name"], namespace=actor["namespace"])
            stats = ray.get(replica.record_routing_stats.remote(), timeout=10)
            errors.append((stats.get("forecast_error"), stats.get("forecast_ratio")))
    return errors


def routers(args, feeds, deadlines) -> dict[str, Any]:
    """Both routers on the same seeded workload, alternating, `--router-repeats` times
    (a shared machine's noise swamps one pair); the summaries of each run and the means."""
    mix = {args.heavy: 0.3, args.light: 0.7}
    runs: dict[str, list[dict[str, float]]] = {"predlat": [], "default": []}
    for rep in range(args.router_repeats):
        for router in runs:
            cluster = Cluster([args.heavy, args.light], 2, router)
            try:
                outs, took = open_loop(
                    cluster.runtime,
                    args.router_rate,
                    args.duration * 2,
                    mix,
                    deadlines,
                    feeds,
                    7 + rep,
                )
                errors = replica_forecast_errors(cluster)
            finally:
                cluster.close()
            s = summarize(outs, took)
            s["replica_forecast_error"] = errors
            runs[router].append(s)
            why = Counter(_reason_kind(o.reason) for o in outs if o.status == "rejected")
            shown = ", ".join(
                "-" if e is None or r is None else f"{e:.3f} (actual/forecast {r:.2f})"
                for e, r in errors
            )
            print(
                f"  {router:8s} router: hp met {s['hp_met']:.3f}, all met {s['met_frac']:.3f}, "
                f"goodput {s['goodput_rps']:.1f}/s, refused {s['rejected_frac']:.3f} {dict(why)}; "
                f"replicas' forecast error {shown}",
                flush=True,
            )
    keys = ("hp_met", "met_frac", "goodput_rps", "rejected_frac")
    mean = {r: {k: float(np.mean([s[k] for s in ss])) for k in keys} for r, ss in runs.items()}
    if args.router_repeats > 1:
        for router, m in mean.items():
            print(
                f"  {router:8s} mean of {args.router_repeats}: hp met {m['hp_met']:.3f}, "
                f"all met {m['met_frac']:.3f}, goodput {m['goodput_rps']:.1f}/s",
                flush=True,
            )
    return {"runs": runs, "mean": mean}


def _reason_kind(reason: str | None) -> str:
    """Who refused: the router (no replica forecast on time) or a replica's scheduler."""
    text = reason or ""
    if text.startswith("no device can meet"):
        return "router"
    if "passed" in text:
        return "late on arrival"
    return "replica"


def faults(args, feeds, deadlines) -> dict[str, Any]:
    cluster = Cluster([args.heavy, args.light], 2)
    try:
        pids = {cluster.handle.pid.remote().result(timeout_s=10) for _ in range(20)}
        victim = sorted(pids)[0]
        before = cluster.runtime.counts.answered
        retried_before = cluster.runtime.counts.retried

        def kill() -> None:
            threading.Thread(target=os.kill, args=(victim, signal.SIGKILL)).start()

        mix = {args.heavy: 0.3, args.light: 0.7}
        outs, _ = open_loop(
            cluster.runtime, args.router_rate, args.duration * 2, mix, deadlines, feeds, 11, kill
        )
        answered = cluster.runtime.counts.answered - before
        retried = cluster.runtime.counts.retried - retried_before
    finally:
        cluster.close()
    statuses = Counter(o.status for o in outs)
    unexplained = sum(o.status in ("rejected", "failed") and not o.reason for o in outs)
    reasons = Counter((o.reason or "").split(";")[0][:60] for o in outs if o.status == "rejected")
    res = {
        "submitted": len(outs),
        "resolved": answered,
        "statuses": dict(statuses),
        "retried": retried,
        "refusals_without_reason": unexplained,
        "top_refusal_reasons": dict(reasons.most_common(3)),
    }
    exact = answered == len(outs) and unexplained == 0
    print(
        f"  killed pid {victim}: {len(outs)} submitted, {answered} resolved exactly once "
        f"({dict(statuses)}), {retried} retried, {unexplained} refusals without a reason: "
        f"{'every request accounted' if exact else 'ACCOUNTING MISMATCH'}",
        flush=True,
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heavy", default="resnet")
    p.add_argument("--light", default="roberta")
    p.add_argument("--heavy-deadline-ms", type=float, default=120.0)
    p.add_argument("--light-deadline-ms", type=float, default=40.0)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per load point")
    p.add_argument("--start-rate", type=float, default=10.0)
    p.add_argument("--step-factor", type=float, default=1.3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the ladder")
    p.add_argument("--router-rate", type=float, default=60.0)
    p.add_argument("--router-repeats", type=int, default=1, help="router pairs (phase 2)")
    p.add_argument("--requests", type=int, default=200, help="sequential HTTP requests")
    p.add_argument("--scale-models", default="vgg,vit", help="phase 6's models")
    p.add_argument("--scale-rows", type=int, default=4, help="rows per phase-6 request")
    p.add_argument("--scale-deadline-ms", type=float, default=600.0)
    p.add_argument("--scale-start-rate", type=float, default=4.0)
    p.add_argument("--phases", default="1,6,2,4,5", help="which phases to run (3 comes with 2)")
    p.add_argument("--out", default=None, help="write results.json here")
    args = p.parse_args()
    if args.router_repeats < 1:
        p.error(f"--router-repeats must be at least 1, got {args.router_repeats}")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    feeds = inputs_for([args.heavy, args.light])
    deadlines = {args.heavy: args.heavy_deadline_ms / 1e3, args.light: args.light_deadline_ms / 1e3}
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    phases = set(args.phases.split(","))
    try:
        # Latency first, in a process no load phase has touched: every deployment leaves
        # its router's thread and update client behind in this process, and in a full
        # run they slowed even the in-process plain `predlat serve` (p50 3.6 -> 6.1 ms).
        if "4" in phases:
            print("4. added latency of the Ray front door (sequential HTTP)", flush=True)
            results["added_latency"] = added_latency(args, feeds)
        if "1" in phases:
            print("1. SLO capacity, 1 slot per replica", flush=True)
            results["capacity"] = scale_out(args, "capacity", feeds, deadlines)
        if "6" in phases:
            models = args.scale_models.split(",")
            print(
                f"6. SLO capacity, compute-heavy requests: {', '.join(models)}, "
                f"{args.scale_rows} rows each, deadline {args.scale_deadline_ms:.0f} ms",
                flush=True,
            )
            heavy_feeds = inputs_for(models, rows=args.scale_rows)
            heavy_deadlines = dict.fromkeys(models, args.scale_deadline_ms / 1e3)
            mix = dict.fromkeys(models, 1.0)
            rates = argparse.Namespace(**{**vars(args), "start_rate": args.scale_start_rate})
            results["capacity_heavy"] = scale_out(
                rates, "compute-heavy capacity", heavy_feeds, heavy_deadlines, mix
            )
        if "2" in phases:
            print(f"2. routers at {args.router_rate} req/s, 2 replicas, skewed models", flush=True)
            DECISION_TIMES.clear()
            results["routers"] = routers(args, feeds, deadlines)
            times = np.asarray(DECISION_TIMES) * 1e3
            results["decision_ms"] = {
                "n": len(times),
                "p50": float(np.percentile(times, 50)),
                "p99": float(np.percentile(times, 99)),
            }
            print(
                f"3. routing decision: p50 {results['decision_ms']['p50']:.3f} ms, "
                f"p99 {results['decision_ms']['p99']:.3f} ms over {len(times)} decisions"
            )
        if "5" in phases:
            print("5. a replica killed under load", flush=True)
            results["faults"] = faults(args, feeds, deadlines)
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
