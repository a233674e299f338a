"""Assemble a runtime from names: models, a device, a profile, a policy."""

from __future__ import annotations

import os
from collections.abc import Sequence

from predlat.devices.onnxruntime_device import OrtDevice, OrtDeviceConfig
from predlat.errors import ConfigError
from predlat.models.registry import resolve_models
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.profiling.profiler import load_or_profile
from predlat.runtime.runtime import Runtime
from predlat.scheduling.policies import get_policy
from predlat.scheduling.scheduler import Scheduler, SchedulerConfig
from predlat.traces.records import BatchRecord

BATCH_SIZES = (1, 2, 4, 8)
REPEATS = 20
# Deadline reserve for what the forecast does not see: the hand-off from the control
# thread to a slot's worker and back.
MARGIN_S = 0.5e-3


def build_runtime(
    models: Sequence[str | ModelSpec],
    *,
    slots: int,
    policy: str,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
    quantile: float = 0.95,
    max_queue: int = 1000,
    progress: bool = True,
    max_batch: int = 8,
    margin_s: float = MARGIN_S,
    high_reserve: int = 1,
    training: Sequence[BatchRecord] = (),
    serial_threads: int | None = None,
) -> tuple[Runtime, Profile]:
    """A runtime (not started) serving `models` (zoo names, .onnx paths or specs) on an ONNX
    Runtime device with `slots` slots of `threads` intra-op threads, scheduled by
    `policy`. The profile comes from the machine cache (measured only if missing).

    `serial` runs one batch at a time on one slot with the intra-op thread count that
    makes it fastest here (`serial_threads`, or measured among 1..cores; profiles of
    each count are cached). `training`: finished batches to fit the policy's predictor.
    `high_reserve`: slots low-priority work leaves free while high-priority requests keep
    arriving (see SchedulerConfig)."""
    chosen = get_policy(policy)
    if slots < 1:
        raise ConfigError(f"slots must be at least 1, got {slots}")
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), got {quantile}")
    specs = [m for m in models if isinstance(m, ModelSpec)]  # named already (a repository)
    specs += resolve_models([m for m in models if not isinstance(m, ModelSpec)])
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"model names given twice: {', '.join(s.name for s in specs)}")
    if chosen.one_at_a_time:
        slots = 1
        threads = serial_threads or best_serial_threads(specs, provider, progress)
    profile = load_or_profile(
        specs, BATCH_SIZES, REPEATS, intra_op_threads=threads, provider=provider, progress=progress
    )
    device = OrtDevice(
        OrtDeviceConfig(num_slots=slots, intra_op_threads=threads, provider=provider)
    )
    try:
        for spec in specs:
            device.load(spec)
        forecaster = chosen.make_forecaster(profile, quantile, training)
        scheduler = Scheduler(
            [s.name for s in specs],
            slots,
            forecaster,
            profile,
            chosen,
            SchedulerConfig(
                max_batch=max_batch,
                max_queue=max_queue,
                margin_s=margin_s,
                high_reserve=high_reserve,
            ),
        )
    except BaseException:
        device.close()
        raise
    runtime = Runtime(device, scheduler, profile, specs={s.name: s for s in specs})
    return runtime, profile


def best_serial_threads(
    specs: Sequence[ModelSpec], provider: str = "CPUExecutionProvider", progress: bool = True
) -> int:
    """The intra-op thread count with the least total solo latency over the models and
    batch sizes: the fastest way to run one batch at a time here. Candidates are 1, 2,
    4, ... up to the usable cores; measured once per machine and thread count (the
    profiles are cached). Other providers than the CPU's: 1 (the accelerator computes)."""
    if not provider.startswith("CPU"):
        return 1
    cores = _usable_cores()
    candidates = sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores})
    best, best_total = 1, float("inf")
    for t in candidates:
        profile = load_or_profile(
            specs, BATCH_SIZES, REPEATS, intra_op_threads=t, provider=provider, progress=progress
        )
        total = sum(profile.solo_latency(s.name, n) for s in specs for n in BATCH_SIZES)
        if total < best_total:
            best, best_total = t, total
    return best


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / cgroup CPU pinning
    except (AttributeError, OSError):
        return os.cpu_count() or 1
