"""The study's measurements on this machine's device: profile, floors, traces.

Everything measured is written to the study folder in the layout `study_data` reads
(profile.json, floors.json, traces/*.parquet), so the evaluation can be rerun anywhere
with `predlat study --traces DIR`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from predlat.devices.base import BatchJob
from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.traces.collect import CpuMeter, collect, summarize
from predlat.traces.trace_file import TraceFileError, read_trace, write_trace

from .colocation_floor import draw_schedule, measure_colocation_floor
from .floors import FloorSummary, noise_floor
from .study_config import StudyConfig, TraceSpec, machine_regime
from .study_data import FLOORS_FILE, TRACES_DIR, StudyData, StudyTrace, write_floors
from .study_progress import StudyProgress


def measure_noise_floor(
    device: Any,
    models: Sequence[str],
    sizes: Sequence[int],
    repeats: int,
    *,
    warmup: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
) -> FloorSummary:
    """Fresh solo runs on slot 0 (the other slots idle), `repeats` per (model, size)."""
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
    floor = noise_floor(samples)
    floor.info.update(
        repeats=repeats, batch_sizes=list(sizes), foreign_cpu_frac=meter.foreign_frac()
    )
    return floor


def measure_colocation(
    config: StudyConfig, profile: Profile, device: Any, on_progress: Callable[[int, int], None]
) -> FloorSummary:
    """One seeded trace-like schedule per K, replayed `colocation_repeats` times."""
    schedules = [
        draw_schedule(
            config.models,
            config.profile_sizes,
            k,
            config.colocation_batches,
            profile.solo_latency,
            seed=config.seed + 100 * k,
        )
        for k in config.colocation_ks
    ]
    return measure_colocation_floor(
        device, schedules, config.colocation_repeats, on_progress=on_progress
    )


def trace_matches(meta: dict[str, Any], spec: TraceSpec) -> bool:
    return (
        meta.get("models") == list(spec.models)
        and meta.get("concurrency") == spec.concurrency
        and meta.get("load") == spec.load
        and meta.get("duration_s") == spec.duration
        and meta.get("seed") == spec.seed
    )


def collect_trace(
    device: Any,
    specs: Sequence[ModelSpec],
    profile: Profile,
    spec: TraceSpec,
    out_dir: Path,
    reuse: bool,
    bar: StudyProgress,
) -> StudyTrace:
    regime = machine_regime(profile.machine, spec.concurrency)
    path = out_dir / TRACES_DIR / f"{spec.name}.parquet"
    if reuse and path.exists():
        try:
            old = read_trace(path)
        except TraceFileError:
            old = None
        if old is not None and trace_matches(old.metadata, spec):
            bar.log(f"{spec.name}: reused {path.name} ({len(old.records)} batches)")
            return _study_trace(spec, regime, old.records, old.metadata, reused=True)
    result = collect(
        device,
        specs,
        profile,
        spec.collect_config(),
        progress=False,
        on_tick=lambda s: bar.sub_progress(min(s, spec.duration), spec.duration),
    )
    meta = result.metadata(profile)
    trace = _study_trace(spec, regime, result.records, meta)
    meta.update(trace.study_metadata())
    write_trace(path, result.records, meta)
    summary = summarize(result.records, profile)
    foreign = trace.foreign_cpu_frac
    bar.log(
        f"{spec.name} ({regime}): {summary.batches} batches, mean concurrency "
        f"{summary.mean_concurrency:.2f}, mean slowdown {summary.mean_slowdown:.2f}x"
        + (f", {result.dropped} requests dropped at the end" if result.dropped else "")
        + (f", other processes used {foreign:.0%} of the CPU" if foreign is not None else "")
    )
    return trace


def _study_trace(
    spec: TraceSpec, regime: str, records: list, meta: dict[str, Any], reused: bool = False
) -> StudyTrace:
    return StudyTrace(
        name=spec.name,
        set_name=spec.set_name,
        models=spec.models,
        concurrency=spec.concurrency,
        load=spec.load,
        regime=regime,
        records=records,
        dropped=int(meta.get("dropped", 0)),
        foreign_cpu_frac=meta.get("foreign_cpu_frac"),
        cpu_samples=list(meta.get("foreign_cpu_samples", [])),
        reused=reused,
    )


def measure(
    config: StudyConfig,
    device: Any,
    specs: Sequence[ModelSpec],
    profile: Profile,
    out_dir: Path,
    bar: StudyProgress,
    timings: dict[str, float],
    reuse_traces: bool = False,
) -> StudyData:
    """Floors and traces on `device` (the study's slots); written into `out_dir`. The
    device is closed at the end."""
    import time

    by_name = {s.name: s for s in specs}
    traces: list[StudyTrace] = []
    colocation = None
    try:
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
        bar.log(f"noise floor (leave-one-out): {noise.mean_rel_err:.2%} over {noise.samples} runs")
        if config.colocation_ks:
            t = time.perf_counter()
            bar.step("co-location floor: one schedule per K, replayed")
            colocation = measure_colocation(config, profile, device, bar.sub_progress)
            timings["colocation_floor_s"] = time.perf_counter() - t
            shown = ", ".join(f"{v:.2%} at K={k}" for k, v in colocation.per_group.items())
            bar.log(f"co-location floor (leave-one-out): {shown}")
        write_floors(out_dir / FLOORS_FILE, noise, colocation)
        t = time.perf_counter()
        for index, spec in enumerate(config.grid):
            bar.step(f"trace {index + 1}/{len(config.grid)}: {spec.name}")
            models = [by_name[m] for m in spec.models]
            traces.append(collect_trace(device, models, profile, spec, out_dir, reuse_traces, bar))
        timings["traces_s"] = time.perf_counter() - t
    finally:
        device.close()
    return StudyData(profile, traces, noise, colocation)
