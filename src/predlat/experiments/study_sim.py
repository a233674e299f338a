"""A study folder from the simulated device: traces with a known interference law,
written exactly as `predlat study` writes measured ones, so the whole evaluation path
(`predlat study --traces DIR`) runs without a device, in tests and what-if studies.

Batches of random models and sizes (1..max_batch) arrive as a seeded Poisson process
at `load` x the rate that would keep min(K, cores) slots busy at solo speed, wait in one
FIFO queue, and run on the first free of K slots.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predlat.devices.base import BatchJob, BatchResult
from predlat.devices.simulated import InterferenceLaw, SimulatedDevice
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord, attach_timelines
from predlat.traces.trace_file import write_trace

from .study_config import TraceSpec, machine_regime
from .study_data import PROFILE_FILE, TRACES_DIR, StudyTrace


def profile_cost(profile: Profile):
    def cost(model: str, n: int) -> tuple[float, float, float]:
        f = profile.features(model, n)
        return profile.solo_latency(model, n), f["compute_util"], f["memory_util"]

    return cost


def simulate_records(
    profile: Profile,
    spec: TraceSpec,
    law: InterferenceLaw,
    batches: int,
    max_batch: int = 8,
) -> list[BatchRecord]:
    """`batches` finished batches of one simulated run of `spec` (times in seconds)."""
    rng = np.random.default_rng(spec.seed)
    device = SimulatedDevice(profile_cost(profile), spec.concurrency, law, seed=spec.seed)
    for m in spec.models:
        device.load(m)
    sizes = list(range(1, max_batch + 1))
    mean_solo = float(np.mean([profile.solo_latency(m, n) for m in spec.models for n in sizes]))
    parallel = min(spec.concurrency, law.cores or spec.concurrency)
    gap = mean_solo / (spec.load * parallel)
    pending: deque[tuple[int, str, int, float]] = deque()
    free = list(range(spec.concurrency))
    done: list[BatchRecord] = []
    dispatched: dict[int, float] = {}

    def finished(result: BatchResult) -> None:
        done.append(BatchRecord.from_result(result, dispatched.pop(result.batch_id)))
        free.append(result.slot)
        free.sort()

    t, arrived = float(rng.exponential(gap)), 0
    while arrived < batches or pending or device.running():
        end = device.next_event()
        if arrived < batches and (end is None or t <= end):
            device.clock.now = max(device.clock.now, t)
            model = spec.models[int(rng.integers(len(spec.models)))]
            pending.append((arrived, model, int(rng.choice(sizes)), t))
            arrived += 1
            t += float(rng.exponential(gap))
        elif end is not None:
            device.advance(end)
        while pending and free:
            batch_id, model, n, _ = pending.popleft()
            dispatched[batch_id] = device.now()
            device.submit(free.pop(0), BatchJob(batch_id, model, n), finished)
    return attach_timelines(done)


def write_simulated_study(
    out_dir: Path,
    profile: Profile,
    specs: Sequence[TraceSpec],
    *,
    law: InterferenceLaw | None = None,
    batches: int = 400,
) -> list[StudyTrace]:
    """profile.json and traces/<name>.parquet for every spec, as a study folder."""
    out_dir = Path(out_dir)
    law = law or InterferenceLaw(cores=profile.machine.cores)
    profile.save(out_dir / PROFILE_FILE)
    traces = []
    for spec in specs:
        records = simulate_records(profile, spec, law, batches)
        regime = machine_regime(profile.machine, spec.concurrency)
        trace = StudyTrace(
            spec.name, spec.set_name, spec.models, spec.concurrency, spec.load, regime, records
        )
        meta = {
            "models": list(spec.models),
            "concurrency": spec.concurrency,
            "load": spec.load,
            "seed": spec.seed,
            "device": "simulated",
            **trace.study_metadata(),
        }
        write_trace(out_dir / TRACES_DIR / f"{spec.name}.parquet", records, meta)
        traces.append(trace)
    return traces
