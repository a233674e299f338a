"""The study: how well each latency predictor does under co-location on this machine.

Steps, end to end:
1. profile every model alone (or reuse the cached profile);
2. measure the noise floor: fresh repeated solo runs of each (model, batch size),
   each predicted by the median of its own repeats -- no predictor can beat it; and the
   co-location noise floor: identical co-locations of K batches repeated, each batch
   predicted by its own median (colocation_floor.py);
3. collect traces over a grid of model sets x loads x concurrency;
4. split each trace chronologically (first 75% of batches by start time to train),
   fit every predictor once on all training parts pooled, and evaluate a copy of that
   fit on each test part, in forecast mode (what a scheduler sees) and, for the fine
   predictors, in posterior mode (the real timeline);
5. shift: fit on one model set at one load, then stream the rest of that trace followed
   by a trace of other models at another load, and follow the error over time;
6. write results.json, report.md and plots.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from predlat import __version__
from predlat.errors import ConfigError
from predlat.experiments.colocation_floor import (
    draw_scenarios,
    measure_colocation_floor,
    median_error_summary,
)
from predlat.predict import (
    PREDICTOR_NAMES,
    Prediction,
    error_summary,
    evaluate_forecast,
    evaluate_posterior,
    make_predictor,
)
from predlat.profiling.profile import Profile
from predlat.traces.collect import CollectConfig, TraceSummary, collect, summarize
from predlat.traces.records import BatchRecord, Overlap
from predlat.traces.trace_file import TraceFileError, read_trace, write_trace

LOADS = {"low": 0.25, "medium": 0.5, "high": 0.75}
STAT_KEYS = ("mean_rel_err", "p50", "p95", "p99", "under_frac", "q95_exceed_frac")
POSTERIOR_SUFFIX = "-posterior"
ONLINE_TARGET_BATCHES = 300  # adaptive predictors should recover within this many
# A batch counts as "quiet" when other processes used less than this share of the CPU
# in the sampling period of its start: the errors a dedicated machine would show.
QUIET_FOREIGN_CPU = 0.10


# -- configuration -------------------------------------------------------------------
@dataclass(frozen=True)
class TraceSpec:
    """One trace of the study: which models, how many at once, how loaded, how long."""

    name: str
    set_name: str
    models: tuple[str, ...]
    concurrency: int
    load: float
    duration: float
    seed: int

    def collect_config(self) -> CollectConfig:
        return CollectConfig(self.concurrency, self.load, self.duration, self.seed)


@dataclass(frozen=True)
class ShiftSpec:
    """Fit on the first part of `before`; stream its rest, then all of `after`."""

    before: TraceSpec
    after: TraceSpec


@dataclass(frozen=True)
class StudyConfig:
    mode: str
    models: tuple[str, ...]  # model names (a zoo name, or an .onnx file's stem)
    model_sets: dict[str, tuple[str, ...]]
    grid: tuple[TraceSpec, ...]
    shift: ShiftSpec | None
    profile_sizes: tuple[int, ...] = (1, 2, 4, 8)
    profile_repeats: int = 20
    noise_sizes: tuple[int, ...] = (1, 2, 4, 8)
    noise_repeats: int = 30
    colocation_ks: tuple[int, ...] = (2, 3, 4)  # empty: no co-location floor
    colocation_scenarios: int = 3  # per K
    colocation_repeats: int = 12
    colocation_seed: int = 0
    predictors: tuple[str, ...] = PREDICTOR_NAMES
    train_frac: float = 0.75
    quantile: float = 0.95
    window: int = 50  # rolling window (batches) of the shift's error over time
    min_periods: int = 10  # a rolling mean needs at least this many batches
    recovery_factor: float = 1.5
    sources: dict[str, str] = field(default_factory=dict)  # name -> path, for user files
    device: str = "onnxruntime"  # a make_device name

    def source(self, model: str) -> str:
        return self.sources.get(model, model)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("the study needs at least one model")
        if not self.grid:
            raise ConfigError("the study grid is empty")
        if not 0 < self.train_frac < 1:
            raise ConfigError(f"train fraction must be in (0, 1), got {self.train_frac}")
        if not self.predictors:
            raise ConfigError("the study needs at least one predictor")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_sets"] = {k: list(v) for k, v in self.model_sets.items()}
        return data


def split_model_sets(models: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """All models, and (with two or more) the two halves of the list as subsets A and B."""
    models = tuple(models)
    sets = {f"all{len(models)}": models}
    if len(models) >= 2:
        half = (len(models) + 1) // 2
        sets["A"] = models[:half]
        sets["B"] = models[half:]
    return sets


def study_config(
    models: Sequence[str],
    mode: str = "full",
    seed: int = 0,
    sources: dict[str, str] | None = None,
) -> StudyConfig:
    """The study's grid.

    full:  every model set x low/medium/high load x K = 2, 3, 4; 25 s per trace.
    quick: all models x low/medium/high x K = 2, 4, plus subsets A and B at medium load
           and K = 3; 10 s per trace, profiles with 10 repeats, noise floor with 10.
    Co-location floor: K = 2, 3, 4; 6 scenarios per K, 12 repeats (quick: 3 and 6).
    """
    if mode not in ("full", "quick"):
        raise ConfigError(f"unknown study mode '{mode}' (full or quick)")
    sets = split_model_sets(models)
    all_name = next(iter(sets))
    quick = mode == "quick"
    duration = 10.0 if quick else 25.0
    points: list[tuple[str, str, int]] = []  # (set, load level, K)
    if quick:
        points += [(all_name, level, k) for level in LOADS for k in (2, 4)]
        points += [(s, "medium", 3) for s in sets if s != all_name]
    else:
        points += [(s, level, k) for s in sets for level in LOADS for k in (2, 3, 4)]
    grid = tuple(
        TraceSpec(
            name=f"{s}-k{k}-{level}",
            set_name=s,
            models=sets[s],
            concurrency=k,
            load=LOADS[level],
            duration=duration,
            seed=seed + i,
        )
        for i, (s, level, k) in enumerate(points)
    )
    before_set = "A" if "A" in sets else all_name
    after_set = "B" if "B" in sets else all_name
    shift = ShiftSpec(
        before=TraceSpec(
            name=f"shift-before-{before_set}-low",
            set_name=before_set,
            models=sets[before_set],
            concurrency=3,
            load=LOADS["low"],
            duration=20.0 if quick else 40.0,
            seed=seed + 1000,
        ),
        after=TraceSpec(
            name=f"shift-after-{after_set}-high",
            set_name=after_set,
            models=sets[after_set],
            concurrency=3,
            load=LOADS["high"],
            duration=15.0 if quick else 30.0,
            seed=seed + 1001,
        ),
    )
    return StudyConfig(
        mode=mode,
        models=tuple(models),
        model_sets=sets,
        grid=grid,
        shift=shift,
        profile_repeats=10 if quick else 20,
        noise_repeats=10 if quick else 30,
        colocation_scenarios=3 if quick else 6,
        colocation_repeats=6 if quick else 12,
        colocation_seed=seed,
        sources=dict(sources or {}),
    )


# -- pure parts ----------------------------------------------------------------------
def split_chronological(
    records: Sequence[BatchRecord], train_frac: float = 0.75
) -> tuple[list[BatchRecord], list[BatchRecord]]:
    """First `train_frac` of the batches by start time to train, the rest to test."""
    ordered = sorted(records, key=lambda r: (r.start, r.batch_id))
    cut = round(len(ordered) * train_frac)
    return ordered[:cut], ordered[cut:]


def relabel(
    records: Sequence[BatchRecord],
    *,
    id_offset: int = 0,
    time_offset: float = 0.0,
    device: int | None = None,
) -> list[BatchRecord]:
    """Records of one trace made distinct from another's: batch ids (also in timelines)
    shifted, times shifted, and optionally a device index of their own."""

    def overlap(o: Overlap) -> Overlap:
        return replace(
            o, batch_id=o.batch_id + id_offset, start=o.start + time_offset, end=o.end + time_offset
        )

    return [
        replace(
            r,
            batch_id=r.batch_id + id_offset,
            dispatch=r.dispatch + time_offset,
            start=r.start + time_offset,
            end=r.end + time_offset,
            timeline=tuple(overlap(o) for o in r.timeline),
            device=r.device if device is None else device,
        )
        for r in records
    ]


def rolling_mean(values: Sequence[float], window: int, min_periods: int = 1) -> np.ndarray:
    """Trailing mean over the last `window` values; NaN until `min_periods` are seen."""
    x = np.asarray(values, dtype=float)
    out = np.full(x.size, np.nan)
    if x.size == 0:
        return out
    cum = np.concatenate(([0.0], np.cumsum(x)))
    for k in range(1, x.size + 1):
        lo = max(0, k - window)
        if k - lo >= min_periods:
            out[k - 1] = (cum[k] - cum[lo]) / (k - lo)
    return out


def recovery_batches(
    after_errors: Sequence[float], threshold: float, window: int = 50, min_periods: int = 10
) -> int | None:
    """Batches after a shift until the trailing mean error over the last `window`
    post-shift batches (at least `min_periods` of them) first falls to `threshold` or
    below; None if it never does. A predictor that the shift never hurt recovers at
    `min_periods`, the first point where the rolling error is measured."""
    rolling = rolling_mean(after_errors, window, min_periods)
    hits = np.flatnonzero(rolling <= threshold)
    return int(hits[0]) + 1 if hits.size else None


def noise_floor_errors(samples: dict[tuple[str, int], Sequence[float]]) -> dict[str, Any]:
    """The solo noise floor from repeated solo latencies keyed (model, batch size), with
    the mean error per model."""
    return median_error_summary(samples, lambda key: key[0], "per_model")


def is_fine(name: str, predictor: Any = None) -> bool:
    kind = getattr(predictor, "kind", None)
    return kind == "fine" if kind is not None else name.startswith("fine")


# -- evaluation on collected traces (pure given the records) ---------------------------
@dataclass
class CollectedTrace:
    spec: TraceSpec
    records: list[BatchRecord]
    summary: TraceSummary
    dropped: int = 0
    wall_s: float = 0.0
    reused: bool = False
    foreign_cpu_frac: float | None = None  # CPU share other processes used meanwhile
    cpu_samples: list = field(default_factory=list)  # [(end of period s, that share)]


@dataclass
class GridEvaluation:
    """Per evaluated name (forecast: `fine`, posterior: `fine-posterior`), the
    predictions on every test part, by trace index."""

    predictions: dict[str, dict[int, list[Prediction]]] = field(default_factory=dict)
    fit_s: dict[str, float] = field(default_factory=dict)
    train_batches: int = 0
    test_batches: int = 0

    def pooled(self, name: str) -> list[Prediction]:
        return [p for preds in self.predictions[name].values() for p in preds]


def evaluate_grid(
    traces: Sequence[CollectedTrace],
    profile: Profile,
    names: Sequence[str],
    *,
    train_frac: float = 0.75,
    quantile: float = 0.95,
    on_step: Callable[[str], None] | None = None,
) -> GridEvaluation:
    """Fit each predictor once on every trace's training part pooled; evaluate a fresh
    copy of that fit on each test part (so one configuration's test data never teaches
    the predictor about another's)."""
    parts: list[tuple[list[BatchRecord], list[BatchRecord]]] = []
    offset = 0
    for index, trace in enumerate(traces):
        # Own device index per trace: histories and forecasters never mix two runs.
        records = relabel(trace.records, id_offset=offset, device=index)
        offset += max((r.batch_id for r in trace.records), default=-1) + 1
        parts.append(split_chronological(records, train_frac))
    pool = [r for train, _ in parts for r in train]
    result = GridEvaluation(
        train_batches=len(pool), test_batches=sum(len(test) for _, test in parts)
    )
    for name in names:
        if on_step:
            on_step(name)
        started = time.perf_counter()
        fitted = make_predictor(name, profile).fit(pool)
        result.fit_s[name] = time.perf_counter() - started
        forecast: dict[int, list[Prediction]] = {}
        posterior: dict[int, list[Prediction]] = {}
        for index, (_, test) in enumerate(parts):
            forecast[index] = evaluate_forecast(copy.deepcopy(fitted), profile, test, quantile)
            if is_fine(name, fitted):
                posterior[index] = evaluate_posterior(copy.deepcopy(fitted), test, quantile)
        result.predictions[name] = forecast
        if posterior:
            result.predictions[name + POSTERIOR_SUFFIX] = posterior
    return result


@dataclass
class ShiftEvaluation:
    errors: dict[str, list[float]]  # per predictor, per streamed batch in start order
    shift_index: int  # batches streamed before the shift
    train_batches: int
    stats: dict[str, dict[str, Any]]
    # Start of each streamed batch on its own trace's clock (to line up with that
    # trace's CPU samples).
    starts: list[float] = field(default_factory=list)
    foreign: list[float | None] = field(default_factory=list)  # CPU share of others then


def evaluate_shift(
    before: Sequence[BatchRecord],
    after: Sequence[BatchRecord],
    profile: Profile,
    names: Sequence[str],
    *,
    train_frac: float = 0.75,
    quantile: float = 0.95,
    window: int = 50,
    min_periods: int = 10,
    recovery_factor: float = 1.5,
) -> ShiftEvaluation:
    """Fit on the first part of `before`, then stream (forecast mode, online predictors
    learning) the rest of `before` followed by `after`, as one device's run."""
    train, pre = split_chronological(relabel(before, device=0), train_frac)
    gap = 1.0  # idle second between the two runs: no batch of one overlaps the other
    end = max((r.end for r in before), default=0.0)
    start = min((r.dispatch for r in after), default=0.0)
    first_id = max((r.batch_id for r in before), default=-1) + 1
    offset = end + gap - start
    post = relabel(after, id_offset=first_id, time_offset=offset, device=0)
    pre_ids = {r.batch_id for r in pre}
    errors: dict[str, list[float]] = {}
    stats: dict[str, dict[str, Any]] = {}
    shift_index = 0
    starts: list[float] = []
    for name in names:
        fitted = make_predictor(name, profile).fit(train)
        preds = evaluate_forecast(fitted, profile, pre + post, quantile)
        series = [p.rel_err for p in preds]
        shift_index = sum(1 for p in preds if p.batch_id in pre_ids)
        errors[name] = series
        stats[name] = shift_stats(
            series[:shift_index],
            series[shift_index:],
            window=window,
            min_periods=min_periods,
            factor=recovery_factor,
        )
        stats[name]["online"] = bool(getattr(fitted, "online", False))
        starts = [p.time - (offset if p.batch_id not in pre_ids else 0.0) for p in preds]
    return ShiftEvaluation(errors, shift_index, len(train), stats, starts)


def foreign_at(samples: Sequence[Sequence[float]], t: float) -> float | None:
    """Other processes' CPU share during the sampling period that contains time `t`
    (samples are (end of period, share), in time order)."""
    for end, frac in samples:
        if t <= end:
            return float(frac)
    return float(samples[-1][1]) if samples else None


def shift_stats(
    before: Sequence[float],
    after: Sequence[float],
    *,
    window: int = 50,
    min_periods: int = 10,
    factor: float = 1.5,
) -> dict[str, Any]:
    before_mean = float(np.mean(before)) if len(before) else math.nan
    after_mean = float(np.mean(after)) if len(after) else math.nan
    tail = list(after)[-window:]
    threshold = factor * before_mean
    recovery = (
        recovery_batches(after, threshold, window, min_periods)
        if math.isfinite(threshold)
        else None
    )
    rolling = rolling_mean(after, window, min_periods)
    return {
        "before_mean_rel_err": before_mean,
        "after_mean_rel_err": after_mean,
        "after_last_window_mean_rel_err": float(np.mean(tail)) if tail else math.nan,
        "peak_rolling_after": float(np.nanmax(rolling)) if np.isfinite(rolling).any() else None,
        "recovery_threshold": threshold,
        "recovery_batches": recovery,
        "before_batches": len(before),
        "after_batches": len(after),
    }


# -- results -------------------------------------------------------------------------
def grid_results(evaluation: GridEvaluation, traces: Sequence[CollectedTrace]) -> dict[str, Any]:
    """`predictors.<name>` (pooled over test parts) and a per-trace breakdown."""
    predictors: dict[str, dict[str, Any]] = {}
    for name in evaluation.predictions:
        pooled = evaluation.pooled(name)
        summary = error_summary(pooled)
        entry: dict[str, Any] = {k: summary[k] for k in STAT_KEYS}
        entry["batches"] = int(summary["n"])
        entry["per_model"] = _per_model(pooled)
        quiet = [
            p
            for index, preds in evaluation.predictions[name].items()
            for p in preds
            if _is_quiet(traces[index].cpu_samples, p.time)
        ]
        entry["quiet"] = {
            "batches": len(quiet),
            "mean_rel_err": error_summary(quiet)["mean_rel_err"] if quiet else None,
        }
        if name in evaluation.fit_s:
            entry["fit_s"] = evaluation.fit_s[name]
        predictors[name] = entry
    per_trace = []
    for index, trace in enumerate(traces):
        row: dict[str, Any] = {
            "name": trace.spec.name,
            "set": trace.spec.set_name,
            "models": list(trace.spec.models),
            "concurrency": trace.spec.concurrency,
            "load": trace.spec.load,
            "batches": trace.summary.batches,
            "mean_concurrency": trace.summary.mean_concurrency,
            "mean_slowdown": trace.summary.mean_slowdown,
            "overlapped_frac": trace.summary.overlapped_frac,
            "dropped_requests": trace.dropped,
            "foreign_cpu_frac": trace.foreign_cpu_frac,
            "mean_rel_err": {},
        }
        for name, by_trace in evaluation.predictions.items():
            preds = by_trace.get(index, [])
            row["mean_rel_err"][name] = error_summary(preds)["mean_rel_err"] if preds else None
        per_trace.append(row)
    return {"predictors": predictors, "per_trace": per_trace}


def _is_quiet(samples: Sequence[Sequence[float]], t: float) -> bool:
    share = foreign_at(samples, t)
    return share is not None and share < QUIET_FOREIGN_CPU


def _per_model(predictions: Sequence[Prediction]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for p in predictions:
        groups.setdefault(p.model, []).append(p.rel_err)
    return {m: float(np.mean(v)) for m, v in sorted(groups.items())}


def target_check(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on this run's numbers (None where a number is
    missing)."""
    preds = results.get("predictors", {})
    floor = results.get("noise_floor", {}).get("mean_rel_err")
    rls = preds.get("fine-rls", {}).get("mean_rel_err")
    coarse = preds.get("coarse", {}).get("mean_rel_err")
    quiet = preds.get("fine-rls", {}).get("quiet", {})
    out: dict[str, Any] = {
        "quiet_fine_rls_mean_rel_err": quiet.get("mean_rel_err"),
        "quiet_coarse_mean_rel_err": preds.get("coarse", {}).get("quiet", {}).get("mean_rel_err"),
        "quiet_batches": quiet.get("batches", 0),
        "fine_rls_mean_rel_err": rls,
        "coarse_mean_rel_err": coarse,
        "noise_floor_mean_rel_err": floor,
        "fine_rls_over_noise_floor": _ratio(rls, floor),
        "fine_rls_over_coarse": _ratio(rls, coarse),
    }
    # Not a target: how far fine-rls is from what repeated co-locations allow.
    colocation = (results.get("colocation_floor") or {}).get("mean_rel_err")
    out["colocation_floor_mean_rel_err"] = colocation
    out["fine_rls_over_colocation_floor"] = _ratio(rls, colocation)
    out["within_1_5x_noise_floor"] = (
        None
        if out["fine_rls_over_noise_floor"] is None
        else out["fine_rls_over_noise_floor"] <= 1.5
    )
    out["at_most_third_of_coarse"] = (
        None if out["fine_rls_over_coarse"] is None else out["fine_rls_over_coarse"] <= 1 / 3
    )
    shift = results.get("shift") or {}
    adaptive = {n: s.get("recovery_batches") for n, s in shift.items() if s.get("online")}
    out["adaptive_recovery_batches"] = adaptive
    out["adaptive_recover_within_300"] = (
        None
        if not adaptive
        else all(v is not None and v <= ONLINE_TARGET_BATCHES for v in adaptive.values())
    )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def to_jsonable(value: Any) -> Any:
    """NaN and infinities become null: results.json stays valid JSON for any reader."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- running on the device -----------------------------------------------------------
def measure_colocation(config: StudyConfig, device: Any, bar: Any) -> dict[str, Any]:
    """The co-location noise floor over scenarios drawn from the profiled pairs."""
    pairs = [(m, n) for m in config.models for n in config.profile_sizes]
    scenarios = draw_scenarios(
        pairs, config.colocation_ks, config.colocation_scenarios, config.colocation_seed
    )
    return measure_colocation_floor(
        device, scenarios, config.colocation_repeats, on_progress=bar.sub_progress
    )


def measure_noise_floor(
    device: Any,
    models: Sequence[str],
    sizes: Sequence[int],
    repeats: int,
    *,
    warmup: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Fresh solo runs on slot 0 (the other slots idle), `repeats` per (model, size)."""
    from predlat.devices.base import BatchJob
    from predlat.traces.collect import CpuMeter

    meter = CpuMeter()
    samples: dict[tuple[str, int], list[float]] = {}
    total, done, batch_id = len(models) * len(sizes), 0, 0
    for model in models:
        for n in sizes:
            times = []
            for i in range(warmup + repeats):
                result = device.run_sync(0, BatchJob(batch_id, model, n))
                batch_id += 1
                if result.error:
                    raise ConfigError(f"solo run of {model} batch {n} failed: {result.error}")
                if i >= warmup:
                    times.append(result.latency)
            samples[(model, n)] = times
            done += 1
            if on_progress:
                on_progress(done, total)
    floor = noise_floor_errors(samples)
    floor["repeats"] = repeats
    floor["batch_sizes"] = list(sizes)
    floor["foreign_cpu_frac"] = meter.foreign_frac()
    return floor


def trace_matches(meta: dict[str, Any], spec: TraceSpec) -> bool:
    return (
        meta.get("models") == list(spec.models)
        and meta.get("concurrency") == spec.concurrency
        and meta.get("load") == spec.load
        and meta.get("duration_s") == spec.duration
        and meta.get("seed") == spec.seed
    )


@dataclass
class StudyRun:
    """What `run_study` produced (also written to disk)."""

    results: dict[str, Any]
    out_dir: Path
    grid: GridEvaluation | None = None
    shift: ShiftEvaluation | None = None
    traces: list[CollectedTrace] = field(default_factory=list)


def run_study(
    config: StudyConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    reuse_traces: bool = False,
    console: Console | None = None,
) -> StudyRun:
    """Run the whole study on this machine's real device; see the module docstring."""
    from predlat.experiments.study_report import StudyProgress, write_outputs
    from predlat.models import resolve_models
    from predlat.profiling.profiler import load_or_profile

    config.validate()
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    specs = resolve_models([config.source(m) for m in config.models])
    names = [s.name for s in specs]
    if names != list(config.models):
        raise ConfigError(f"models resolve to {names}, the study config names {config.models}")
    t = time.perf_counter()
    console.print(f"[bold]study[/] ({config.mode}): profiling {len(specs)} models alone")
    profile = load_or_profile(
        specs,
        config.profile_sizes,
        config.profile_repeats,
        out_dir=out_dir,
        progress=progress,
        device=config.device,
    )
    timings["profile_s"] = time.perf_counter() - t

    shift_specs = [config.shift.before, config.shift.after] if config.shift else []
    all_specs = list(config.grid) + shift_specs
    collect_s = sum(s.duration for s in all_specs)
    console.print(
        f"[bold]study[/]: {len(all_specs)} traces, {collect_s / 60:.1f} min of workload, "
        f"{len(config.predictors)} predictors"
    )
    slots = max(s.concurrency for s in all_specs)
    device = _open_device(max((slots, *config.colocation_ks)), specs, config.device)
    colocation: dict[str, Any] | None = None
    traces: list[CollectedTrace] = []
    shift_traces: list[CollectedTrace] = []
    try:
        with StudyProgress(console, progress, config) as bar:
            t = time.perf_counter()
            bar.step("noise floor: repeated solo runs")
            noise = measure_noise_floor(
                device,
                config.models,
                config.noise_sizes,
                config.noise_repeats,
                on_progress=bar.sub_progress,
            )
            timings["noise_floor_s"] = time.perf_counter() - t
            bar.log(
                f"noise floor: mean relative error {noise['mean_rel_err']:.2%} "
                f"over {noise['samples']} solo runs"
            )
            if config.colocation_ks:
                t = time.perf_counter()
                bar.step("co-location noise floor: identical co-locations repeated")
                colocation = measure_colocation(config, device, bar)
                timings["colocation_floor_s"] = time.perf_counter() - t
                per_k = ", ".join(f"{v:.2%} at K={k}" for k, v in colocation["per_k"].items())
                bar.log(f"co-location noise floor: {per_k}")
            t = time.perf_counter()
            by_name = {s.name: s for s in specs}
            for index, spec in enumerate(all_specs):
                bar.step(f"trace {index + 1}/{len(all_specs)}: {spec.name}")
                trace = _trace(
                    device,
                    [by_name[m] for m in spec.models],
                    profile,
                    spec,
                    out_dir,
                    reuse_traces,
                    bar,
                )
                (traces if index < len(config.grid) else shift_traces).append(trace)
            timings["traces_s"] = time.perf_counter() - t

            t = time.perf_counter()
            bar.step("fitting and evaluating predictors on the grid")
            grid = evaluate_grid(
                traces,
                profile,
                config.predictors,
                train_frac=config.train_frac,
                quantile=config.quantile,
                on_step=lambda n: bar.detail(f"predictor {n}"),
            )
            shift_eval = None
            if config.shift:
                bar.step("shift: static vs adaptive predictors")
                shift_eval = evaluate_shift(
                    shift_traces[0].records,
                    shift_traces[1].records,
                    profile,
                    config.predictors,
                    train_frac=config.train_frac,
                    quantile=config.quantile,
                    window=config.window,
                    min_periods=config.min_periods,
                    recovery_factor=config.recovery_factor,
                )
                shift_eval.foreign = [
                    foreign_at(shift_traces[i >= shift_eval.shift_index].cpu_samples, t)
                    for i, t in enumerate(shift_eval.starts)
                ]
            timings["evaluate_s"] = time.perf_counter() - t
    finally:
        device.close()

    results = build_results(
        config, profile, noise, traces, grid, shift_eval, shift_traces, colocation
    )
    timings["total_s"] = time.perf_counter() - started  # plots are added when drawn
    results["timings"] = timings
    write_outputs(out_dir, results, grid, shift_eval, config)
    return StudyRun(results, out_dir, grid, shift_eval, traces + shift_traces)


def build_results(
    config: StudyConfig,
    profile: Profile,
    noise: dict[str, Any],
    traces: Sequence[CollectedTrace],
    grid: GridEvaluation,
    shift: ShiftEvaluation | None,
    shift_traces: Sequence[CollectedTrace] = (),
    colocation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.json document (before timings)."""
    results: dict[str, Any] = {
        "predlat_version": __version__,
        "config": config.to_json(),
        "machine": asdict(profile.machine),
        "fit": "each predictor fitted once on all training parts pooled; each test part "
        "evaluated from a copy of that fit",
        "train_batches": grid.train_batches,
        "test_batches": grid.test_batches,
        "noise_floor": noise,
    }
    if colocation is not None:
        results["colocation_floor"] = colocation
    results.update(grid_results(grid, traces))
    results["foreign_cpu"] = foreign_cpu_summary(noise, [*traces, *shift_traces], colocation)
    if shift is not None:
        results["shift"] = shift.stats
        results["shift_info"] = {
            "train_batches": shift.train_batches,
            "before_batches": shift.shift_index,
            "after_batches": len(next(iter(shift.errors.values()), [])) - shift.shift_index,
            "traces": [
                {
                    "name": t.spec.name,
                    "models": list(t.spec.models),
                    "concurrency": t.spec.concurrency,
                    "load": t.spec.load,
                    "batches": t.summary.batches,
                    "mean_slowdown": t.summary.mean_slowdown,
                    "foreign_cpu_frac": t.foreign_cpu_frac,
                }
                for t in shift_traces
            ],
        }
    results["targets"] = target_check(results)
    return results


def foreign_cpu_summary(
    noise: dict[str, Any],
    traces: Sequence[CollectedTrace],
    colocation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """How much CPU other processes took while this study measured (None: unknown)."""
    values = [t.foreign_cpu_frac for t in traces if t.foreign_cpu_frac is not None]
    return {
        "traces_mean": float(np.mean(values)) if values else None,
        "traces_max": float(np.max(values)) if values else None,
        "noise_floor": noise.get("foreign_cpu_frac"),
        "colocation_floor": (colocation or {}).get("foreign_cpu_frac"),
    }


def _open_device(slots: int, specs: Sequence[Any], name: str) -> Any:
    from predlat.devices.factory import make_device

    device = make_device(name, slots=slots, threads=1)
    for spec in specs:
        device.load(spec)
    return device


def _trace(
    device: Any,
    specs: Sequence[Any],
    profile: Profile,
    spec: TraceSpec,
    out_dir: Path,
    reuse: bool,
    bar: Any,
) -> CollectedTrace:
    path = out_dir / "traces" / f"{spec.name}.parquet"
    if reuse and path.exists():
        try:
            trace = read_trace(path)
        except TraceFileError:
            trace = None
        if trace is not None and trace_matches(trace.metadata, spec):
            summary = summarize(trace.records, profile)
            bar.log(f"{spec.name}: reused {path.name} ({summary.batches} batches)")
            return CollectedTrace(
                spec,
                trace.records,
                summary,
                int(trace.metadata.get("dropped", 0)),
                0.0,
                reused=True,
                foreign_cpu_frac=trace.metadata.get("foreign_cpu_frac"),
                cpu_samples=trace.metadata.get("foreign_cpu_samples", []),
            )
    result = collect(
        device,
        specs,
        profile,
        spec.collect_config(),
        progress=False,
        on_tick=lambda s: bar.sub_progress(min(s, spec.duration), spec.duration),
    )
    write_trace(path, result.records, result.metadata(profile))
    summary = summarize(result.records, profile)
    foreign = result.extra.get("foreign_cpu_frac")
    bar.log(
        f"{spec.name}: {summary.batches} batches, mean concurrency "
        f"{summary.mean_concurrency:.2f}, mean slowdown {summary.mean_slowdown:.2f}x"
        + (f", {result.dropped} requests dropped at the end" if result.dropped else "")
        + (f", other processes used {foreign:.0%} of the CPU" if foreign is not None else "")
    )
    return CollectedTrace(
        spec,
        result.records,
        summary,
        result.dropped,
        result.wall_s,
        foreign_cpu_frac=foreign,
        cpu_samples=result.extra.get("foreign_cpu_samples", []),
    )
