"""The scheduling comparison: the same seeded workload against each policy, on the real
device, over a sweep of loads.

Method
- Models are profiled alone (or the machine's cached profile is reused). Load is a
  fraction of the device capacity as `predlat trace` defines it (`device_capacity`:
  mid-size batches alone on every parallel unit), split equally over the models as
  independent Poisson (or bursty) streams; a fraction `hp_frac` of requests is high
  priority. A request's deadline is `deadline_factor` x its model's solo latency at
  batch 1 (one intra-op thread), or `deadline_ms`, the same for every policy.
- Predictors that need data (`coarse`, and `predlat`'s fine-rls as its starting point)
  are fitted on one short training trace collected first with random batch sizes and
  co-location (`collect_trace`), the same trace for both. `predlat` keeps learning
  online during each run; `coarse` does not.
- Each (load, policy) run gets a fresh runtime (a fresh device and scheduler); requests
  are submitted open loop at their arrival times, with no inputs (the device feeds
  random ones: only time matters here).

Metrics per run: `hp_met` / `lp_met` are met deadlines over ALL requests of that
priority (rejected and failed count as missed, so refusing work earns nothing);
goodput = met / duration; throughput = finished / duration; latency percentiles of
finished requests (arrival to end); rejected fraction; utilization = busy slot-time /
(slots x span); online prediction error = mean |forecast at dispatch - actual| / actual
per batch; dispatch lag = decision to start on the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from predlat.devices.factory import make_device
from predlat.errors import ConfigError
from predlat.models.registry import resolve_models
from predlat.models.zoo import ZOO_NAMES
from predlat.profiling.profile import Profile
from predlat.profiling.profiler import load_or_profile
from predlat.runtime.build import BATCH_SIZES, REPEATS, best_serial_threads, build_runtime
from predlat.scheduling.outcome import RequestOutcome, summarize
from predlat.scheduling.policies import POLICY_NAMES, get_policy
from predlat.scheduling.request import Priority
from predlat.traces.collect import collect_trace, device_capacity
from predlat.traces.records import BatchRecord
from predlat.workload.arrivals import PROCESSES, Arrival, open_loop_workload

# What results.json carries per policy and load (fractions in 0..1, rates per second).
METRIC_KEYS = (
    "hp_met",
    "lp_met",
    "met_frac",
    "goodput_rps",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "rejected_frac",
    "utilization",
    "pred_mean_rel_err",
    "dispatch_lag_p50_ms",
    "dispatch_lag_p99_ms",
    "mean_batch_size",
    "requests",
    "hp_requests",
    "submit_lag_p99_ms",
)


@dataclass(frozen=True)
class CompareConfig:
    models: tuple[str, ...] = ZOO_NAMES
    policies: tuple[str, ...] = POLICY_NAMES
    loads: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 1.1)
    duration_s: float = 20.0
    slots: int = 4
    threads: int = 1
    device: str = "onnxruntime"  # a make_device name
    deadline_factor: float = 10.0
    deadline_ms: float | None = None
    hp_frac: float = 0.3
    seed: int = 0
    quantile: float = 0.95
    train_s: float = 10.0
    train_load: float = 0.7
    max_batch: int = 8
    max_queue: int = 1000
    high_reserve: int = 1
    process: str = "poisson"
    ours: str = "predlat"  # the policy the targets are about
    # Runs per (load, policy), with seeds seed, seed + 1, ...: one run's high-priority
    # figures move by tenths of a point from noise alone, so close calls need several.
    repeats: int = 1

    def validate(self) -> None:
        for p in self.policies:
            get_policy(p)
        if not self.policies:
            raise ConfigError("give at least one policy")
        if not self.loads or any(not 0 < x <= 4 for x in self.loads):
            raise ConfigError(
                f"loads must be in (0, 4] (fractions of capacity), got "
                f"{', '.join(map(str, self.loads))}"
            )
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s}")
        if self.deadline_ms is None and not self.deadline_factor > 0:
            raise ConfigError(f"deadline factor must be positive, got {self.deadline_factor}")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"deadline must be positive, got {self.deadline_ms} ms")
        if not 0.0 <= self.hp_frac <= 1.0:
            raise ConfigError(f"high-priority fraction must be in [0, 1], got {self.hp_frac}")
        if self.process not in PROCESSES:
            raise ConfigError(f"unknown arrival process '{self.process}'")
        if self.slots < 1 or self.threads < 1:
            raise ConfigError("slots and threads must be at least 1")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")


def quick_config(**overrides: Any) -> CompareConfig:
    """A reduced sweep that finishes in a few minutes on a small machine."""
    base = CompareConfig(loads=(0.4, 0.7, 1.0), duration_s=8.0, train_s=5.0)
    return replace(base, **overrides)


@dataclass
class RunResult:
    policy: str
    load: float
    metrics: dict[str, float]
    outcomes: list[RequestOutcome] = field(repr=False)
    batches: list[tuple[BatchRecord, float]] = field(repr=False)


ProgressFn = Callable[[str, float], None]  # (what is running, fraction done of it)


def run_compare(
    config: CompareConfig,
    progress: ProgressFn | None = None,
    show_profiling: bool = False,
) -> dict[str, Any]:
    """Run the whole comparison; returns the results.json content."""
    config.validate()
    note = progress or (lambda what, frac: None)
    started = time.perf_counter()
    specs = resolve_models(config.models)
    names = [s.name for s in specs]
    note("profiling", 0.0)
    profile = load_or_profile(
        specs,
        BATCH_SIZES,
        REPEATS,
        intra_op_threads=config.threads,
        device=config.device,
        progress=show_profiling,
    )
    serial_threads = None
    if any(get_policy(p).one_at_a_time for p in config.policies):
        serial_threads = best_serial_threads(specs, config.device, progress=show_profiling)
    deadlines = _deadlines(config, profile, names)
    capacity = device_capacity(profile, names, config.slots)
    note("training trace", 0.0)
    training = _training_trace(config, specs, profile)

    runs: dict[float, dict[str, list[RunResult]]] = {}
    total = len(config.loads) * len(config.policies) * config.repeats
    done = 0
    for load in config.loads:
        rates = {m: load * capacity / len(names) for m in names}
        runs[load] = {p: [] for p in config.policies}
        for repeat in range(config.repeats):
            seed = config.seed + repeat
            arrivals = open_loop_workload(
                rates, config.duration_s, seed, config.process, config.hp_frac
            )
            for policy in config.policies:
                what = f"load {load:g} {policy}" + (f" seed {seed}" if config.repeats > 1 else "")

                def tick(frac: float, what: str = what, done: int = done) -> None:
                    note(what, (done + frac) / total)

                runs[load][policy].append(
                    run_one(
                        config, policy, load, arrivals, deadlines, training, serial_threads, tick
                    )
                )
                done += 1
    note("done", 1.0)
    return build_results(
        config,
        runs,
        capacity,
        deadlines,
        serial_threads,
        len(training),
        time.perf_counter() - started,
    )


def run_one(
    config: CompareConfig,
    policy: str,
    load: float,
    arrivals: Sequence[Arrival],
    deadlines: dict[str, float],
    training: Sequence[BatchRecord],
    serial_threads: int | None,
    tick: Callable[[float], None] | None = None,
) -> RunResult:
    """One policy against one workload on a fresh runtime; `tick(fraction submitted)`."""
    runtime, _ = build_runtime(
        config.models,
        slots=config.slots,
        policy=policy,
        threads=config.threads,
        device=config.device,
        quantile=config.quantile,
        max_queue=config.max_queue,
        progress=False,
        max_batch=config.max_batch,
        high_reserve=config.high_reserve,
        training=training,
        serial_threads=serial_threads,
    )
    batches: list[tuple[BatchRecord, float]] = []
    runtime.add_batch_listener(lambda rec, predicted: batches.append((rec, predicted)))
    runtime.start()
    try:
        futures, submit_lags = _replay(runtime, arrivals, deadlines, tick)
        outcomes = [f.result(timeout=config.duration_s + 120.0) for f in futures]
        stats = runtime.stats()
    finally:
        runtime.stop(drain=False)
    metrics = summarize(outcomes, config.duration_s)
    span = _span(outcomes)
    metrics["utilization"] = stats.busy_slot_s / (runtime.device.num_slots * span)
    errors = [abs(p - r.latency) / r.latency for r, p in batches if r.latency > 0]
    metrics["pred_mean_rel_err"] = float(np.mean(errors)) if errors else math.nan
    metrics["dispatch_lag_p50_ms"] = stats.dispatch_lag_p50_ms
    metrics["dispatch_lag_p99_ms"] = stats.dispatch_lag_p99_ms
    metrics["mean_batch_size"] = (
        float(np.mean([r.batch_size for r, _ in batches])) if batches else math.nan
    )
    metrics["submit_lag_p99_ms"] = (
        float(np.percentile(submit_lags, 99) * 1e3) if submit_lags else math.nan
    )
    return RunResult(policy, load, metrics, outcomes, batches)


def _replay(runtime, arrivals, deadlines, tick=None):
    """Submit each arrival at its time (open loop); returns futures and how late each
    submission was."""
    futures, lags = [], []
    t0 = time.perf_counter() + 0.05
    for i, a in enumerate(arrivals):
        if tick is not None and i % 256 == 0:
            tick(i / max(1, len(arrivals)))
        target = t0 + a.time
        wait = target - time.perf_counter()
        if wait > 0:  # sleep, never spin: a spinning feeder would hold the GIL
            time.sleep(wait)
        lags.append(time.perf_counter() - target)
        futures.append(
            runtime.submit(
                a.model,
                None,
                deadline_s=deadlines[a.model],
                priority=Priority.HIGH if a.high_priority else Priority.LOW,
            )
        )
    return futures, lags


def _span(outcomes: Sequence[RequestOutcome]) -> float:
    if not outcomes:
        return 1e-9
    first = min(o.arrival for o in outcomes)
    last = max([o.end for o in outcomes if o.end is not None] or [first])
    return max(last - first, 1e-9)


def _deadlines(config: CompareConfig, profile: Profile, names: Sequence[str]) -> dict[str, float]:
    if config.deadline_ms is not None:
        return dict.fromkeys(config.models, config.deadline_ms / 1e3)
    return {
        m: config.deadline_factor * profile.solo_latency(n, 1)
        for m, n in zip(config.models, names, strict=True)
    }


def _training_trace(config: CompareConfig, specs, profile: Profile) -> list[BatchRecord]:
    needs = any(get_policy(p).predictor != "solo" for p in config.policies)
    if not needs or config.train_s <= 0:
        return []
    device = make_device(config.device, slots=config.slots, threads=config.threads)
    try:
        for spec in specs:
            device.load(spec)
        return collect_trace(
            device,
            specs,
            profile,
            concurrency=config.slots,
            load=config.train_load,
            duration=config.train_s,
            seed=config.seed + 1,
            progress=False,
            max_batch=config.max_batch,
        )
    finally:
        device.close()


# -- results -------------------------------------------------------------------------------
def pooled_metrics(results: Sequence[RunResult], duration_s: float) -> dict[str, Any]:
    """One policy's metrics over repeated runs: the outcome figures (deadlines met,
    rates, latency percentiles, rejections) over all their requests together, the
    device figures (utilization, lags, prediction error, batch size) averaged; with
    more than one run, each run's high-priority fraction met as well."""
    if len(results) == 1:
        return dict(results[0].metrics)
    outcomes = [o for r in results for o in r.outcomes]
    metrics: dict[str, Any] = summarize(outcomes, duration_s * len(results))
    for key in METRIC_KEYS:
        if key not in metrics:
            values = [v for r in results if math.isfinite(v := r.metrics.get(key, math.nan))]
            metrics[key] = float(np.mean(values)) if values else math.nan
    metrics["hp_met_runs"] = [r.metrics.get("hp_met") for r in results]
    return metrics


def build_results(
    config: CompareConfig,
    runs: dict[float, dict[str, list[RunResult]]],
    capacity: float,
    deadlines: dict[str, float],
    serial_threads: int | None,
    training_batches: int,
    wall_s: float,
) -> dict[str, Any]:
    loads: dict[str, Any] = {}
    for load, by_policy in runs.items():
        loads[_key(load)] = {
            "offered_rps": load * capacity,
            "policies": {
                p: _policy_entry(pooled_metrics(rs, config.duration_s))
                for p, rs in by_policy.items()
            },
        }
    return {
        "config": {
            **asdict(config),
            "models": list(config.models),
            "policies": list(config.policies),
            "loads": list(config.loads),
        },
        "capacity_rps": capacity,
        "deadlines_ms": {m: d * 1e3 for m, d in deadlines.items()},
        "serial_threads": serial_threads,
        "training_batches": training_batches,
        "wall_s": wall_s,
        "loads": loads,
        "targets": check_targets(loads, config.ours),
    }


def _policy_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {k: _clean(metrics.get(k)) for k in METRIC_KEYS}
    if "hp_met_runs" in metrics:
        entry["hp_met_runs"] = [_clean(v) for v in metrics["hp_met_runs"]]
    return entry


def check_targets(loads: dict[str, Any], ours: str = "predlat") -> dict[str, Any]:
    """The issue's targets, evaluated on these results (None where a policy is missing)."""
    out: dict[str, Any] = {"ours": ours}
    stressed = []
    for key, entry in loads.items():
        pol = entry["policies"]
        if "oblivious" in pol and (pol["oblivious"].get("met_frac") or 1.0) < 0.9:
            stressed.append(key)
    out["loads_where_oblivious_below_90pct"] = stressed
    checks = []
    for key in stressed:
        pol = loads[key]["policies"]
        if ours not in pol:
            continue
        hp = pol[ours].get("hp_met")
        good = pol[ours].get("goodput_rps")
        serial = pol.get("serial", {}).get("goodput_rps")
        ratio = good / serial if good is not None and serial else None
        checks.append(
            {
                "load": key,
                "hp_met": hp,
                "goodput_vs_serial": ratio,
                "met": bool(hp is not None and hp >= 0.99 and ratio is not None and ratio >= 1.2),
            }
        )
    out["stressed_loads"] = checks
    out["hp_99_and_goodput_1_2x_serial"] = any(c["met"] for c in checks) if checks else None
    never_worse, below = [], []
    for key, entry in loads.items():
        pol = entry["policies"]
        if ours in pol and "coarse" in pol:
            a, b = pol[ours].get("hp_met"), pol["coarse"].get("hp_met")
            if a is not None and b is not None:
                never_worse.append(a >= b)
                if a < b:
                    below.append(_shortfall(key, a, b, pol[ours].get("hp_requests")))
    out["never_worse_than_coarse_hp"] = all(never_worse) if never_worse else None
    out["below_coarse_hp"] = below
    return out


def _shortfall(load: str, ours: float, coarse: float, requests: float | None) -> dict:
    """How far below coarse, in points and in requests, beside the binomial standard
    error of the difference of two such fractions: the noise of the measurement, for
    scale."""
    n = requests or math.nan
    stderr = math.sqrt((ours * (1 - ours) + coarse * (1 - coarse)) / n)
    return {
        "load": load,
        "gap": coarse - ours,
        "gap_requests": _clean((coarse - ours) * n),
        "requests": _clean(n),
        "stderr": _clean(stderr),
    }


def _key(load: float) -> str:
    return f"{load:g}"


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
