"""Assemble a runtime from names: models, a device, a profile, a policy."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from pathlib import Path

from predlat.devices.base import BatchJob, Device, usable_cores
from predlat.devices.factory import DEFAULT_DEVICE, describe_device, make_device
from predlat.errors import ConfigError
from predlat.models.registry import resolve_models
from predlat.models.spec import ModelSpec
from predlat.predict.base import BasePredictor
from predlat.predict.persist import load_predictor
from predlat.profiling.profile import Profile
from predlat.profiling.profiler import load_or_profile
from predlat.runtime.runtime import Runtime
from predlat.scheduling.policies import ALL_CORES, DEFAULT_QUANTILE, Policy, get_policy
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
    policy: str | Policy,
    threads: int = 1,
    device: str = DEFAULT_DEVICE,
    quantile: float | None = DEFAULT_QUANTILE,
    max_queue: int = 1000,
    progress: bool = True,
    max_batch: int = 8,
    margin_s: float = MARGIN_S,
    high_reserve: int = 1,
    training: Sequence[BatchRecord] = (),
    predictor: BasePredictor | None = None,
    predictor_file: str | Path | None = None,
) -> tuple[Runtime, Profile]:
    """A runtime (not started) serving `models` (zoo names, .onnx paths or specs) on `device` (a
    `make_device` name) with `slots` slots of `threads` intra-op threads, scheduled by
    `policy`. The profile comes from the machine cache (measured only if missing).

    `policy`: a name (planning at `quantile`, None for the mean) or a Policy as is.
    One-at-a-time policies run on one slot with their own thread count (`serial`: every
    usable core, the whole device; `serial-1t`: one thread). `training`: finished
    batches to fit the policy's predictor; `predictor`: an already fitted one instead
    (used as is, and it keeps learning: pass a copy to reuse it), or `predictor_file`, a
    `predlat fit` file fitted against the same profile. `high_reserve`: slots
    low-priority work leaves free while high-priority requests keep arriving (see
    SchedulerConfig)."""
    chosen = get_policy(policy, quantile) if isinstance(policy, str) else policy
    if slots < 1:
        raise ConfigError(f"slots must be at least 1, got {slots}")
    specs = [m for m in models if isinstance(m, ModelSpec)]  # named already (a repository)
    specs += resolve_models([m for m in models if not isinstance(m, ModelSpec)])
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"model names given twice: {', '.join(s.name for s in specs)}")
    if chosen.one_at_a_time:
        slots = 1
        threads = policy_threads(chosen, device, threads)
    profile = load_or_profile(
        specs, BATCH_SIZES, REPEATS, intra_op_threads=threads, device=device, progress=progress
    )
    if predictor_file is not None:
        predictor = load_predictor(predictor_file, profile)
    engine = make_device(device, slots=slots, threads=threads)
    try:
        for spec in specs:
            engine.load(spec)
        forecaster = chosen.make_forecaster(profile, training=training, predictor=predictor)
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
        engine.close()
        raise
    runtime = Runtime(engine, scheduler, profile, specs={s.name: s for s in specs})
    return runtime, profile


def policy_threads(policy: Policy, device: str, threads: int) -> int:
    """Intra-op threads per slot under `policy`: `threads` for co-locating policies; for
    one-at-a-time ones every usable core (ALL_CORES) or their own count. On an
    accelerator: `threads` (the accelerator computes)."""
    if not policy.one_at_a_time or describe_device(device).accelerator:
        return threads
    return usable_cores() if policy.serial_threads == ALL_CORES else policy.serial_threads


def warm_up(device: Device, models: Sequence[str], max_batch: int) -> None:
    """Run every model at every batch size up to `max_batch` once on every slot (slots side
    by side), before a runtime serves. A slot's first run of a shape pays for what later
    runs reuse (ONNX Runtime plans that shape's memory; the device makes random feeds):
    on a 2-core CPU up to 28 ms from dispatch to start and 2-3x the solo latency, per
    cold (slot, model, size). A fresh runtime would charge that to its first requests,
    which no profile or simulator sees."""
    ids = itertools.count(-1, -1)  # negative: never a scheduler's batch id
    for model in models:
        for size in range(1, max_batch + 1):
            done = [threading.Event() for _ in range(device.num_slots)]
            for slot, event in enumerate(done):
                job = BatchJob(next(ids), model, size)
                device.submit(slot, job, lambda _result, e=event: e.set())
            for event in done:
                event.wait()
