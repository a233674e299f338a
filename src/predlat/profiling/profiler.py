"""The solo profiler: each (model, batch size) measured alone on one slot, plus its
resource features, and a per-machine cache so later commands get profiles cheaply.

Measurement: one device (`make_device(name)`) with a single slot; per (model, batch size) a few
warm-up runs, then `repeats` timed runs, each timed right around the engine call (as the
device reports it). Median, p99 and coefficient of variation of those latencies.

Reuse: profiles live in `cache_dir()/profiles/<machine key>.json`. The key names the
machine as predlat sees it (CPU model, cores, what computes as the device describes it,
threads per slot, profile format);
an entry is reused when its model file digest matches and it was measured with at least
the requested number of repeats. Only missing or stale (model, batch size) pairs are
measured and merged in. The machine's peaks are measured once per key and kept in the
same file, so features of different models stay relative to the same peaks. A
measurement during which other processes took more than FOREIGN_CPU_LIMIT of the CPU
is used by the command that made it but not cached (with a warning): every later
command would otherwise inherit its inflated latencies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from predlat.devices.base import BatchJob, Device
from predlat.devices.factory import DEFAULT_DEVICE, describe_device, make_device
from predlat.errors import ConfigError, PredlatError
from predlat.models.spec import ModelSpec
from predlat.profiling.cpu_meter import CpuMeter
from predlat.profiling.graph_cost import GraphCost, graph_costs
from predlat.profiling.peaks import measure_peaks
from predlat.profiling.profile import BatchProfile, LatencyStats, Profile
from predlat.profiling.profile_cache import (
    MachineId,
    Todo,
    cache_allowed,
    merge_measured,
    profile_cache_path,
    read_cached_profile,
    rescale_utils,
    save_profile,
    stale_pairs,
    store_measured,
    subset,
)

WARMUP_RUNS = 3


# -- public entry points ---------------------------------------------------------------
def profile_models(
    specs: Sequence[ModelSpec],
    batch_sizes: Sequence[int],
    repeats: int,
    *,
    intra_op_threads: int = 1,
    device: str = DEFAULT_DEVICE,
    progress: bool = True,
    peaks: Mapping[str, float] | None = None,
) -> Profile:
    """Measure every (model, batch size) alone on one slot of `device` (a `make_device`
    name). Peaks come from `peaks` or else from the machine cache (measured and stored
    there the first time)."""
    sizes = _check_request(specs, batch_sizes, repeats, intra_op_threads)
    info = describe_device(device, intra_op_threads)
    machine = MachineId.current(info)
    if peaks is None:
        peaks = cached_peaks(intra_op_threads, device)
    todo = [(spec, sizes) for spec in specs]
    entries = _measure(todo, repeats, device, machine, peaks, progress)
    return Profile(
        machine=machine.info(peaks),
        models=entries,
        digests={spec.name: spec.digest for spec in specs},
    )


def load_or_profile(
    specs: Sequence[ModelSpec],
    batch_sizes: Sequence[int],
    repeats: int,
    *,
    out_dir: Path | None = None,
    intra_op_threads: int = 1,
    device: str = DEFAULT_DEVICE,
    progress: bool = True,
    force: bool = False,
) -> Profile:
    """The profile of `specs` at `batch_sizes`, from the machine cache where it is still
    valid, measuring only what is missing or stale (everything, peaks included, when
    `force`). Written to `out_dir/profile.json` too when `out_dir` is given."""
    sizes = _check_request(specs, batch_sizes, repeats, intra_op_threads)
    info = describe_device(device, intra_op_threads)
    machine = MachineId.current(info)
    path = profile_cache_path(machine)
    cached = read_cached_profile(path, machine)
    meter = CpuMeter()
    if cached is None or force:
        fresh = Profile(machine=machine.info(measure_peaks(intra_op_threads, info)))
        if cached is not None:  # forced: other models stay, relative to the new peaks
            fresh.models, fresh.digests = cached.models, cached.digests
            rescale_utils(fresh)
        cached = fresh
    todo = stale_pairs(cached, specs, sizes, repeats, force)
    if todo:
        measured = _measure(todo, repeats, device, machine, cached.machine.peaks, progress)
        digests = {spec.name: spec.digest for spec in specs}
        merge_measured(cached, measured, digests)
        if cache_allowed(meter, path):
            store_measured(path, machine, cached, measured, digests)
    result = subset(cached, specs, sizes)
    if out_dir is not None:
        save_profile(result, Path(out_dir) / "profile.json")
    return result


def cached_peaks(intra_op_threads: int = 1, device: str = DEFAULT_DEVICE) -> dict[str, float]:
    """This machine's per-slot peaks, measured once per machine key and cached."""
    info = describe_device(device, intra_op_threads)
    machine = MachineId.current(info)
    path = profile_cache_path(machine)
    cached = read_cached_profile(path, machine)
    if cached is not None and cached.machine.peaks:
        return dict(cached.machine.peaks)
    meter = CpuMeter()
    peaks = measure_peaks(intra_op_threads, info)
    if cache_allowed(meter, path):
        save_profile(Profile(machine=machine.info(peaks)), path)
    return peaks


def batch_features(
    cost: GraphCost, median_s: float, peaks: Mapping[str, float]
) -> dict[str, float]:
    """The resource features (FEATURE_NAMES) of one batch from its static cost, its
    measured median latency and the machine's peaks."""
    seconds = max(median_s, 1e-9)
    gflops_per_s = cost.flops / seconds / 1e9
    gbytes_per_s = cost.bytes / seconds / 1e9
    return {
        "flops": cost.flops,
        "bytes": cost.bytes,
        "gflops_per_s": gflops_per_s,
        "gbytes_per_s": gbytes_per_s,
        "compute_util": gflops_per_s / peaks["gemm_gflops_per_s"],
        "memory_util": gbytes_per_s / peaks["mem_gbytes_per_s"],
        "arith_intensity": cost.arith_intensity,
    }


def model_costs(spec: ModelSpec, sizes: Sequence[int]) -> dict[int, GraphCost]:
    """Static cost per batch size: from the ONNX graph where there is one, else from
    the torch forward pass (full-size models built in code, `.pt2` programs)."""
    if getattr(spec, "format", "onnx") == "onnx":
        return graph_costs(spec.onnx_path, sizes)
    from predlat.models.torch_load import torch_module_for
    from predlat.profiling.torch_cost import torch_costs

    return torch_costs(torch_module_for(spec), spec, sizes)


def latency_stats(latencies: Sequence[float]) -> LatencyStats:
    values = np.asarray(latencies, dtype=float)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return LatencyStats(
        median=float(np.median(values)),
        p99=float(np.percentile(values, 99)),
        cv=std / mean if mean > 0 else 0.0,
        samples=len(values),
    )


# -- measurement -----------------------------------------------------------------------


def _measure(
    todo: Todo,
    repeats: int,
    name: str,
    machine: MachineId,
    peaks: Mapping[str, float],
    progress: bool,
) -> dict[str, dict[int, BatchProfile]]:
    device = make_device(name, slots=1, threads=machine.intra_op_threads)
    batch_ids = itertools.count()
    entries: dict[str, dict[int, BatchProfile]] = {}
    try:
        with _progress_bar(progress, sum(len(sizes) for _, sizes in todo)) as advance:
            for spec, sizes in todo:
                device.load(spec)
                costs = model_costs(spec, sizes)
                entries[spec.name] = {}
                for n in sizes:
                    advance(f"{spec.name} batch {n}", 0)
                    times = _time_batches(device, spec.name, n, repeats, batch_ids)
                    stats = latency_stats(times)
                    entries[spec.name][n] = BatchProfile(
                        stats, batch_features(costs[n], stats.median, peaks)
                    )
                    advance(f"{spec.name} batch {n}", 1)
    finally:
        device.close()
    return entries


def _time_batches(
    device: Device, model: str, batch_size: int, repeats: int, batch_ids: Iterator[int]
) -> list[float]:
    times = []
    for i in range(WARMUP_RUNS + repeats):
        result = device.run_sync(0, BatchJob(next(batch_ids), model, batch_size))
        if result.error is not None:
            raise PredlatError(f"model '{model}' fails at batch size {batch_size}: {result.error}")
        if i >= WARMUP_RUNS:
            times.append(result.latency)
    return times


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator:
    """Yields advance(description, steps); a bar on stderr, or nothing when disabled."""
    bar = Progress(
        TextColumn("profiling {task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        task = bar.add_task("", total=total)

        def advance(description: str, steps: int) -> None:
            bar.update(task, description=description, advance=steps)

        yield advance


# -- cache bookkeeping -----------------------------------------------------------------
def _check_request(
    specs: Sequence[ModelSpec],
    batch_sizes: Sequence[int],
    repeats: int,
    threads: int,
) -> list[int]:
    if not specs:
        raise ConfigError("no models to profile")
    if not batch_sizes or any(n < 1 for n in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    if threads < 1:
        raise ConfigError(f"intra-op threads must be at least 1, got {threads}")
    return sorted(set(batch_sizes))
