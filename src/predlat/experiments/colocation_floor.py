"""The co-location noise floor: one trace-like dispatch schedule, replayed again and again.

A schedule is what a trace looks like from the dispatcher's side: batches of random
models and sizes arriving as a seeded Poisson process, run on K slots (a batch waits for
a free slot). Replaying the same schedule R times runs the same batches beside the same
co-runners at the same offsets; what still varies from one replay to the next (how the
operating system slices cores, caches, clocks) is beyond any predictor. Each batch is
scored against the median of its other replays (leave-one-out), per K.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from predlat.devices.base import BatchJob, BatchResult, Device
from predlat.errors import ConfigError
from predlat.experiments.floors import FloorSummary, floor_summary


@dataclass(frozen=True)
class ScheduledBatch:
    at: float  # seconds after the replay starts (it waits for a free slot)
    model: str
    batch_size: int


@dataclass(frozen=True)
class Schedule:
    k: int
    batches: tuple[ScheduledBatch, ...]


def draw_schedule(
    models: Sequence[str],
    sizes: Sequence[int],
    k: int,
    count: int,
    solo: Callable[[str, int], float],
    *,
    load: float = 0.8,
    seed: int = 0,
) -> Schedule:
    """`count` batches of random (model, size) arriving as a Poisson process whose rate
    keeps `load` x K slots busy at solo speed (so co-runners come and go mid-batch)."""
    if k < 1:
        raise ConfigError(f"co-location size must be at least 1, got {k}")
    if not models or not sizes:
        raise ConfigError("the co-location floor needs at least one model and batch size")
    rng = np.random.default_rng(seed)
    picks = [
        (str(models[int(rng.integers(len(models)))]), int(sizes[int(rng.integers(len(sizes)))]))
        for _ in range(count)
    ]
    mean_solo = float(np.mean([solo(m, n) for m, n in picks])) if picks else 0.0
    gap = mean_solo / (k * load) if mean_solo > 0 else 0.0
    at, batches = 0.0, []
    for model, n in picks:
        batches.append(ScheduledBatch(round(at, 6), model, n))
        at += float(rng.exponential(gap)) if gap > 0 else 0.0
    return Schedule(k, tuple(batches))


def replay(device: Device, schedule: Schedule, first_id: int = 0, timeout: float = 120.0):
    """Run `schedule` once on slots 0..K-1 (wall clock); latencies in schedule order."""
    events: queue.SimpleQueue[BatchResult] = queue.SimpleQueue()
    latencies: list[float | None] = [None] * len(schedule.batches)
    free = list(range(schedule.k))
    t0 = device.now()
    nxt, running = 0, 0
    while nxt < len(schedule.batches) or running:
        now = device.now() - t0
        while free and nxt < len(schedule.batches) and schedule.batches[nxt].at <= now:
            b = schedule.batches[nxt]
            device.submit(free.pop(0), BatchJob(first_id + nxt, b.model, b.batch_size), events.put)
            nxt, running = nxt + 1, running + 1
        wait = timeout
        if free and nxt < len(schedule.batches):
            wait = max(0.0, schedule.batches[nxt].at - (device.now() - t0))
        try:
            result = events.get(timeout=wait) if wait > 0 else events.get_nowait()
        except queue.Empty:
            if wait >= timeout:
                raise ConfigError(
                    f"a co-located batch did not finish within {timeout:.0f} s"
                ) from None
            continue
        if result.error:
            raise ConfigError(f"co-located run of {result.model} failed: {result.error}")
        latencies[result.batch_id - first_id] = result.latency
        free.append(result.slot)
        free.sort()
        running -= 1
    return [float(x) for x in latencies if x is not None]


def measure_colocation_floor(
    device: Device,
    schedules: Sequence[Schedule],
    repeats: int,
    *,
    warmup: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> FloorSummary:
    """Replay each schedule `warmup + repeats` times; per batch, the leave-one-out spread
    of its latency across the repeats; summarised per K (`per_group`)."""
    from predlat.traces.collect import CpuMeter

    if repeats < 2:
        raise ConfigError(f"co-location floor repeats must be at least 2, got {repeats}")
    for schedule in schedules:
        if schedule.k > device.num_slots:
            raise ConfigError(
                f"a co-location of {schedule.k} batches needs {schedule.k} slots, "
                f"the device has {device.num_slots}"
            )
    meter = CpuMeter()
    samples: dict[tuple[int, int, int], list[float]] = {}
    rounds, total, next_id = 0, len(schedules) * (warmup + repeats), 0
    for index, schedule in enumerate(schedules):
        for r in range(warmup + repeats):
            latencies = replay(device, schedule, next_id)
            next_id += len(schedule.batches)
            if r >= warmup:
                for i, latency in enumerate(latencies):
                    samples.setdefault((schedule.k, index, i), []).append(latency)
            rounds += 1
            if on_progress:
                on_progress(rounds, total)
    return colocation_floor(
        samples,
        repeats=repeats,
        warmup=warmup,
        batches_per_schedule=[len(s.batches) for s in schedules],
        foreign_cpu_frac=meter.foreign_frac(),
    )


def colocation_floor(
    samples: dict[tuple[int, int, int], list[float]], **info: object
) -> FloorSummary:
    """The floor from latencies keyed (K, schedule index, batch index), per K."""
    floor = floor_summary(samples, lambda key: str(key[0]))
    floor.info.update(info)
    return floor


def floor_for(floor: FloorSummary | None, batches_per_k: Mapping[int, int]) -> FloorSummary | None:
    """The part of a per-K floor that covers a regime's K values, its mean weighted by
    the regime's test batches per K (so it matches the predictor errors beside it)."""
    if floor is None:
        return None
    keep = {k: floor.per_group[str(k)] for k in batches_per_k if str(k) in floor.per_group}
    weights = [batches_per_k[k] for k in keep]
    if not keep or sum(weights) <= 0:
        return None
    counts = {str(k): floor.per_group_samples.get(str(k), 0) for k in sorted(keep)}
    return FloorSummary(
        mean_rel_err=float(np.average(list(keep.values()), weights=weights)),
        samples=sum(counts.values()),
        per_group={str(k): v for k, v in sorted(keep.items())},
        per_group_samples=counts,
        info=dict(floor.info),
    )
