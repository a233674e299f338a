"""Synthetic profiles and traces with a known slowdown law.

They let tests check predictors against a known truth and let benchmarks run without
real models. Two generators:
  law_records     isolated batches whose latency follows the law applied to the
                  time-averaged co-load of their (random) timeline -- the exact form the
                  fine predictors fit;
  simulate_trace  a device with K slots and a FIFO queue under Poisson arrivals, where each
                  running batch progresses at rate 1 / law(its co-runners right now)
                  -- closer to how real contention behaves (and not exactly linear in the
                  fine features).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from predlat.predict.features import FeatureMap, Vector, count_integral
from predlat.profiling.profile import BatchProfile, LatencyStats, MachineInfo, Profile
from predlat.traces.records import BatchRecord, Overlap, attach_timelines


def synthetic_profile(
    num_models: int = 6, sizes: Sequence[int] = tuple(range(1, 9)), seed: int = 0
) -> Profile:
    """Models m0, m1, ... with solo latencies of 1-12 ms and varied compute / memory
    utilisations (some compute-bound, some memory-bound)."""
    rng = np.random.default_rng(seed)
    machine = MachineInfo(
        provider="synthetic",
        cores=2,
        intra_op_threads=1,
        cpu="synthetic",
        peaks={"gemm_gflops_per_s": 50.0, "mem_gbytes_per_s": 10.0},
    )
    profile = Profile(machine=machine)
    for m in range(num_models):
        base = float(np.exp(rng.uniform(np.log(1e-3), np.log(6e-3))))
        cu_max = float(rng.uniform(0.2, 1.0))
        mu_max = float(rng.uniform(0.2, 1.0))
        entries = {}
        for n in sizes:
            latency = base * (0.4 + 0.6 * n**0.9)
            cu = cu_max * n / (n + 2.0)
            mu = mu_max * (1.2 - 0.5 * n / max(sizes))
            gflops = cu * machine.peaks["gemm_gflops_per_s"]
            gbytes = mu * machine.peaks["mem_gbytes_per_s"]
            features = {
                "flops": gflops * 1e9 * latency,
                "bytes": gbytes * 1e9 * latency,
                "gflops_per_s": gflops,
                "gbytes_per_s": gbytes,
                "compute_util": cu,
                "memory_util": mu,
                "arith_intensity": gflops / gbytes,
            }
            entries[n] = BatchProfile(LatencyStats(latency, latency * 1.05, 0.02, 20), features)
        profile.models[f"m{m}"] = entries
    return profile


@dataclass(frozen=True)
class SlowdownLaw:
    """slowdown = base + count g0 + compute g1 + memory g2 + memory_x mu_self g2
    + count_sq g3 + oversub g4, with g = (co-runner count, sum of co-runner compute_util,
    sum of memory_util, count^2, oversubscription of the profile's cores) in the
    FeatureMap's normalised units. base=1, oversub=1 and the rest 0 is time slicing:
    max(1, threads (1 + n) / cores) with n co-runners."""

    base: float = 1.0
    count: float = 0.1
    compute: float = 0.25
    memory: float = 0.15
    memory_x: float = 0.0
    count_sq: float = 0.0
    oversub: float = 0.0

    def slowdown(self, s: Vector, g: Vector, sensitivity: float = 1.0) -> float:
        """`sensitivity` scales the interference part: a model's own susceptibility that
        its profile features do not show."""
        value = self.count * g[0] + self.compute * g[1] + self.memory * g[2]
        value += self.memory_x * s[2] * g[2]
        if self.count_sq and len(g) > 3:
            value += self.count_sq * g[3]
        if self.oversub and len(g) > 4:
            value += self.oversub * g[4]
        return self.base + sensitivity * value


def _pick(rng, profile: Profile, models: Sequence[str] | None) -> tuple[str, int]:
    names = list(models) if models else list(profile.models)
    model = names[int(rng.integers(len(names)))]
    sizes = profile.batch_sizes(model)
    return model, int(sizes[int(rng.integers(len(sizes)))])


def law_records(
    profile: Profile,
    law: SlowdownLaw,
    count: int,
    *,
    seed: int = 0,
    max_co: int = 3,
    mid_batch: bool = True,
    noise_cv: float = 0.0,
    models: Sequence[str] | None = None,
    spacing: float = 100.0,
    sensitivity: Mapping[str, float] | None = None,
) -> list[BatchRecord]:
    """Isolated batches (one every `spacing` seconds) with random co-runners. With
    mid_batch, co-runners arrive and depart at random points of the batch's lifetime;
    otherwise every co-runner is there from start to end. Latency follows `law` on the
    time-averaged co-load, times lognormal noise of coefficient of variation noise_cv."""
    rng = np.random.default_rng(seed)
    fmap = FeatureMap(profile)
    records, next_id = [], count
    for i in range(count):
        model, n = _pick(rng, profile, models)
        spans = []
        for _ in range(int(rng.integers(0, max_co + 1))):
            co_model, co_n = _pick(rng, profile, models)
            if mid_batch and rng.random() < 0.6:
                lo = float(rng.uniform(0.0, 0.7))
                hi = float(rng.uniform(lo + 0.1, 1.0)) if rng.random() < 0.5 else 1.0
            elif mid_batch:
                lo, hi = 0.0, float(rng.uniform(0.2, 1.0))
            else:
                lo, hi = 0.0, 1.0
            spans.append((co_model, co_n, lo, hi))
        unit = [Overlap(-1, m, k, lo, hi) for m, k, lo, hi in spans]
        ov = fmap.oversub
        sq = count_integral(unit, lambda n: n * n)
        over = count_integral(unit, ov.excess) if ov is not None else 0.0
        zero = ov.zero if ov is not None else 0.0
        g = [0.0, 0.0, 0.0, sq, over + zero]  # unit lifetime: integrals are averages
        for m, k, lo, hi in spans:
            f = fmap.co_vec(m, k)
            g[0] += hi - lo
            g[1] += f[1] * (hi - lo)
            g[2] += f[2] * (hi - lo)
        sens = sensitivity.get(model, 1.0) if sensitivity else 1.0
        sd = law.slowdown(fmap.self_vec(model, n), tuple(g), sens)
        noise = _lognormal(rng, noise_cv)
        length = fmap.solo(model, n) * sd * noise
        start = i * spacing
        timeline = []
        for m, k, lo, hi in spans:
            timeline.append(Overlap(next_id, m, k, start + lo * length, start + hi * length))
            next_id += 1
        timeline.sort(key=lambda o: (o.start, o.batch_id))
        records.append(BatchRecord(i, model, n, 0, start, start, start + length, tuple(timeline)))
    return records


def _lognormal(rng, cv: float) -> float:
    if cv <= 0:
        return 1.0
    sigma = math.sqrt(math.log(1.0 + cv * cv))
    return float(math.exp(rng.normal(-0.5 * sigma * sigma, sigma)))


def simulate_trace(
    profile: Profile,
    law: SlowdownLaw,
    *,
    slots: int = 3,
    load: float = 0.7,
    num_batches: int = 1000,
    seed: int = 0,
    noise_cv: float = 0.0,
    models: Sequence[str] | None = None,
    device: int = 0,
    t0: float = 0.0,
    first_id: int = 0,
    sensitivity: Mapping[str, float] | None = None,
) -> list[BatchRecord]:
    """A device with `slots` slots fed by a FIFO queue of batches arriving as a Poisson
    process at `load` x slots / mean solo latency. Each running batch progresses at rate
    1 / law(co-runners present now). Returns finished batches with timelines, by end.
    Batch ids start at `first_id` and the clock at `t0`, so traces can be chained."""
    rng = np.random.default_rng(seed)
    fmap = FeatureMap(profile)
    names = list(models) if models else list(profile.models)
    mean_solo = float(np.mean([fmap.solo(m, n) for m in names for n in profile.batch_sizes(m)]))
    rate = load * slots / mean_solo
    queue: deque[tuple[int, str, int]] = deque()
    running: dict[int, list] = {}  # id -> [remaining solo work, model, n, slot, start]
    free = list(range(slots))
    records: list[BatchRecord] = []
    t, arrived = t0, 0
    next_arrival = t0 + float(rng.exponential(1.0 / rate))
    while arrived < num_batches or queue or running:
        while queue and free:
            bid, model, n = queue.popleft()
            work = fmap.solo(model, n) * _lognormal(rng, noise_cv)
            running[bid] = [work, model, n, free.pop(0), t]
        speeds = _speeds(running, fmap, law, sensitivity or {})
        t_done, done_id = math.inf, None
        for bid, speed in speeds.items():
            eta = t + running[bid][0] / speed
            if eta < t_done:
                t_done, done_id = eta, bid
        t_next = min(t_done, next_arrival if arrived < num_batches else math.inf)
        for bid, speed in speeds.items():
            running[bid][0] -= (t_next - t) * speed
        t = t_next
        if done_id is not None and t_done <= t:
            work, model, n, slot, start = running.pop(done_id)
            records.append(BatchRecord(done_id, model, n, slot, start, start, t, device=device))
            free.append(slot)
            free.sort()
        elif arrived < num_batches:
            model, n = _pick(rng, profile, models)
            queue.append((first_id + arrived, model, n))
            arrived += 1
            next_arrival = t + float(rng.exponential(1.0 / rate))
    return attach_timelines(records)


def _speeds(
    running: dict[int, list], fmap: FeatureMap, law: SlowdownLaw, sensitivity: Mapping[str, float]
) -> dict[int, float]:
    tot = [0.0, 0.0, 0.0]
    for _, model, n, _, _ in running.values():
        f = fmap.co_vec(model, n)
        tot[0] += 1.0
        tot[1] += f[1]
        tot[2] += f[2]
    out = {}
    for bid, (_, model, n, _, _) in running.items():
        f = fmap.co_vec(model, n)
        others = tot[0] - 1.0
        over = fmap.oversub.at(int(others + 0.5)) if fmap.oversub is not None else 0.0
        g = (others, tot[1] - f[1], tot[2] - f[2], others * others, over)
        out[bid] = 1.0 / law.slowdown(fmap.self_vec(model, n), g, sensitivity.get(model, 1.0))
    return out
