"""The study: how well each latency predictor does under co-location.

Steps, end to end (`run_study`):
1. profile every model alone (or reuse the cached profile) -> DIR/profile.json;
2. noise floors, leave-one-out: fresh repeated solo runs, and one trace-like dispatch
   schedule per K replayed again and again -> DIR/floors.json;
3. traces over a grid of model sets x loads x K, most in the spatial regime ->
   DIR/traces/*.parquet;
4. evaluation, per regime (`evaluate_study`, pure): in-distribution (forecast and
   posterior mode), unseen configurations (leave one trace out), and shifts of one
   factor at a time (study_shift.py);
5. results.json, report.md and plots.

`study_from_traces` runs steps 4-5 on a folder recorded earlier, on any machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from predlat.errors import ConfigError

from .report import write_json
from .study_config import REGIME_ORDER, EvalConfig, StudyConfig
from .study_data import StudyData, load_study_dir
from .study_eval import evaluate_regime
from .study_plots import write_plots
from .study_progress import StudyProgress
from .study_report import render_report
from .study_results import StudyResults, build_results
from .study_shift import evaluate_shifts


@dataclass
class StudyRun:
    """What a study produced (also written to disk)."""

    results: StudyResults
    out_dir: Path
    data: StudyData


def evaluate_study(
    data: StudyData,
    evaluation: EvalConfig,
    config: StudyConfig | None = None,
    on_step: Callable[[str], None] | None = None,
) -> StudyResults:
    """Every predictor on every regime's traces, and the shifts (pure: no device)."""
    evaluation.validate()
    if not data.traces:
        raise ConfigError("the study has no traces to evaluate")
    by_regime: dict[str, list] = {}
    for trace in data.traces:
        by_regime.setdefault(trace.regime, []).append(trace)
    evaluations = [
        evaluate_regime(regime, traces, data.profile, evaluation, on_step)
        for regime, traces in by_regime.items()
    ]
    main = min(by_regime, key=lambda r: REGIME_ORDER.index(r) if r in REGIME_ORDER else 99)
    if on_step:
        on_step("shifts")
    shifts = evaluate_shifts(data.traces, data.profile, evaluation, main)
    return build_results(data, evaluations, shifts, evaluation, config)


def write_outputs(out_dir: Path, results: StudyResults) -> None:
    """Plots, then report.md, then results.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results.plots = write_plots(out_dir, results)
    results.timings["plots_s"] = time.perf_counter() - started
    (out_dir / "report.md").write_text(render_report(results))
    write_json(out_dir / "results.json", results.to_json())


def study_from_traces(
    folder: Path,
    out_dir: Path,
    evaluation: EvalConfig | None = None,
    *,
    console: Console | None = None,
) -> StudyRun:
    """Evaluate a recorded study folder (see study_data.py) and write the same report."""
    started = time.perf_counter()
    data = load_study_dir(Path(folder))
    console = console or Console(stderr=True)
    console.print(
        f"[bold]study[/]: {len(data.traces)} recorded traces from {folder} "
        f"({sum(len(t.records) for t in data.traces)} batches)"
    )
    results = evaluate_study(data, evaluation or EvalConfig())
    results.timings["evaluate_s"] = time.perf_counter() - started
    write_outputs(Path(out_dir), results)
    return StudyRun(results, Path(out_dir), data)


def run_study(
    config: StudyConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    reuse_traces: bool = False,
    console: Console | None = None,
) -> StudyRun:
    """Run the whole study on this machine's real device; see the module docstring."""
    from predlat.models import resolve_models
    from predlat.profiling.profiler import load_or_profile

    from .study_measure import measure

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
    workload = sum(s.duration for s in config.grid)
    console.print(
        f"[bold]study[/]: {len(config.grid)} traces, {workload / 60:.1f} min of workload, "
        f"{len(config.evaluation.predictors)} predictors"
    )
    steps = 2 + bool(config.colocation_ks) + len(config.grid)
    with StudyProgress(console, progress, steps) as bar:
        device = _open_device(config.slots, specs, config.device)
        data = measure(config, device, specs, profile, out_dir, bar, timings, reuse_traces)
        t = time.perf_counter()
        bar.step("fitting and evaluating predictors")
        results = evaluate_study(data, config.evaluation, config, bar.detail)
        timings["evaluate_s"] = time.perf_counter() - t
    results.timings = timings
    write_outputs(out_dir, results)
    timings["total_s"] = time.perf_counter() - started
    write_json(out_dir / "results.json", results.to_json())
    return StudyRun(results, out_dir, data)


def _open_device(slots: int, specs: Sequence[Any], name: str) -> Any:
    from predlat.devices.factory import make_device

    device = make_device(name, slots=slots, threads=1)
    for spec in specs:
        device.load(spec)
    return device
