"""The co-location noise floor: the same co-location, run again and again.

When K co-located batches run more threads than there are cores, the operating system
time-slices them, and the same batches started together take a different time from one
run to the next. No predictor can know how the slices will fall, so the spread of
repeated identical co-locations around their own median bounds how well any predictor
can do under co-location: the co-located counterpart of the solo noise floor.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predlat.devices.base import BatchJob, BatchResult
from predlat.errors import ConfigError


@dataclass(frozen=True)
class Scenario:
    """One co-location: batch i, (model, batch size), runs on slot i; all start together."""

    batches: tuple[tuple[str, int], ...]

    @property
    def k(self) -> int:
        return len(self.batches)


def draw_scenarios(
    pairs: Sequence[tuple[str, int]], ks: Sequence[int], per_k: int, seed: int = 0
) -> list[Scenario]:
    """`per_k` scenarios for each K, each K distinct (model, batch size) pairs drawn from
    `pairs` (with replacement only when there are fewer pairs than K)."""
    if not pairs:
        raise ConfigError("the co-location floor needs at least one (model, batch size)")
    rng = np.random.default_rng(seed)
    ordered = sorted(pairs)
    scenarios = []
    for k in ks:
        if k < 1:
            raise ConfigError(f"co-location size must be at least 1, got {k}")
        for _ in range(per_k):
            picks = rng.choice(len(ordered), size=k, replace=len(ordered) < k)
            scenarios.append(Scenario(tuple(ordered[int(i)] for i in picks)))
    return scenarios


def median_error_summary(
    samples: Mapping[tuple, Sequence[float]], group_of: Callable[[tuple], str], per: str
) -> dict[str, Any]:
    """Relative error of each repeated latency against the median of its own sample
    group: the best any predictor could do for those repeats. Overall statistics, plus
    the mean error per `group_of(key)` under the name `per` (string keys: JSON)."""
    errors: list[float] = []
    grouped: dict[str, list[float]] = {}
    for key, times in samples.items():
        x = np.asarray(times, dtype=float)
        rel = (np.abs(x - np.median(x)) / x).tolist()
        errors.extend(rel)
        grouped.setdefault(group_of(key), []).extend(rel)
    if not errors:
        nan = math.nan
        return {"mean_rel_err": nan, "p50": nan, "p95": nan, "p99": nan, "samples": 0, per: {}}
    e = np.asarray(errors)
    return {
        "mean_rel_err": float(e.mean()),
        "p50": float(np.percentile(e, 50)),
        "p95": float(np.percentile(e, 95)),
        "p99": float(np.percentile(e, 99)),
        "samples": int(e.size),
        per: {g: float(np.mean(v)) for g, v in sorted(grouped.items())},
    }


def colocation_floor_errors(samples: Mapping[tuple[int, int, int], Sequence[float]]) -> dict:
    """The co-location floor from latencies keyed (K, scenario index, slot), with the
    mean error per K."""
    return median_error_summary(samples, lambda key: str(key[0]), "per_k")


def run_together(
    device: Any, jobs: Sequence[BatchJob], timeout: float = 120.0
) -> list[BatchResult]:
    """Submit job i to slot i back to back, then wait for all; results in slot order."""
    results: list[BatchResult | None] = [None] * len(jobs)
    left = [len(jobs)]
    lock = threading.Lock()
    done = threading.Event()

    def finisher(slot: int) -> Callable[[BatchResult], None]:
        def on_done(result: BatchResult) -> None:
            results[slot] = result
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        return on_done

    callbacks = [finisher(slot) for slot in range(len(jobs))]  # built before: no gaps
    for slot, job in enumerate(jobs):
        device.submit(slot, job, callbacks[slot])
    if not done.wait(timeout):
        raise ConfigError(f"co-located batches did not finish within {timeout:.0f} s")
    return [r for r in results if r is not None]


def measure_colocation_floor(
    device: Any,
    scenarios: Sequence[Scenario],
    repeats: int,
    *,
    warmup: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run each scenario `warmup + repeats` times in a row (slots K and up idle) and
    measure the spread of each batch's latency around its own median."""
    from predlat.traces.collect import CpuMeter

    if repeats < 1:
        raise ConfigError(f"co-location floor repeats must be at least 1, got {repeats}")
    for scenario in scenarios:
        if scenario.k > device.num_slots:
            raise ConfigError(
                f"a co-location of {scenario.k} batches needs {scenario.k} slots, "
                f"the device has {device.num_slots}"
            )
    meter = CpuMeter()
    samples: dict[tuple[int, int, int], list[float]] = {}
    spreads: list[float] = []
    batch_id = 0
    rounds, total = 0, len(scenarios) * (warmup + repeats)
    for index, scenario in enumerate(scenarios):
        times: list[list[float]] = [[] for _ in scenario.batches]
        for i in range(warmup + repeats):
            jobs = [BatchJob(batch_id + s, m, n) for s, (m, n) in enumerate(scenario.batches)]
            batch_id += len(jobs)
            results = run_together(device, jobs)
            failed = next((r for r in results if r.error), None)
            if failed is not None:
                raise ConfigError(
                    f"co-located run of {failed.model} batch {failed.batch_size} failed: "
                    f"{failed.error}"
                )
            if i >= warmup:
                for slot, result in enumerate(results):
                    times[slot].append(result.latency)
                spreads.append(max(r.start for r in results) - min(r.start for r in results))
            rounds += 1
            if on_progress:
                on_progress(rounds, total)
        for slot, t in enumerate(times):
            samples[(scenario.k, index, slot)] = t
    floor = colocation_floor_errors(samples)
    floor["scenarios"] = [_scenario_row(i, s, samples) for i, s in enumerate(scenarios)]
    floor["repeats"] = repeats
    floor["warmup"] = warmup
    floor["mean_start_spread_ms"] = 1000 * float(np.mean(spreads)) if spreads else None
    floor["foreign_cpu_frac"] = meter.foreign_frac()
    return floor


def _scenario_row(
    index: int, scenario: Scenario, samples: Mapping[tuple[int, int, int], Sequence[float]]
) -> dict[str, Any]:
    batches = []
    for slot, (model, n) in enumerate(scenario.batches):
        x = np.asarray(samples[(scenario.k, index, slot)], dtype=float)
        median = float(np.median(x))
        batches.append(
            {
                "model": model,
                "batch_size": n,
                "median_ms": 1000 * median,
                "mean_rel_err": float(np.mean(np.abs(x - median) / x)),
            }
        )
    return {"k": scenario.k, "batches": batches}
