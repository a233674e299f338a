"""Run recorded or random co-location schedules on a simulated device: traces the
simulator writes itself (to test calibration against a known law), and a real trace's
batches replayed at their real start times (to compare simulated latencies with real)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from predlat.devices.base import BatchJob, BatchResult
from predlat.devices.simulated import HANDOFFS, SimulatedDevice
from predlat.sim.device_file import DeviceSpec
from predlat.traces.records import BatchRecord, attach_timelines


def _device(spec: DeviceSpec, slots: int, seed: int) -> SimulatedDevice:
    # Batches go in at their start times: a serving host's hand-offs are no part of it.
    law = replace(spec.law, **dict.fromkeys(HANDOFFS, 0.0))
    device = SimulatedDevice(spec.cost(), slots, law, seed=seed, name=spec.name)
    for m in spec.models:
        device.load(m)
    return device


def random_colocation(
    spec: DeviceSpec,
    slots: int,
    batches: int,
    seed: int = 0,
    max_batch: int = 8,
    gap_s: float = 0.0,
) -> list[BatchRecord]:
    """Keep `slots` slots busy with random (model, batch size) batches, each slot waiting
    a random pause of up to `gap_s` before its next, so co-runner sets vary; returns
    `batches` records with timelines (what `predlat trace` would record)."""
    rng = random.Random(seed)
    device = _device(spec, slots, seed + 1)
    models = sorted(spec.models)
    results: list[BatchResult] = []
    free_at = {s: rng.uniform(0, gap_s) for s in range(slots)}
    submitted = 0
    while submitted < batches or device.running():
        ready = [s for s in range(slots) if not device.is_busy(s)]
        t_free = min((free_at[s] for s in ready), default=float("inf"))
        t_end = device.next_event() or float("inf")
        if submitted < batches and ready and t_free <= t_end:
            slot = min(ready, key=lambda s: (free_at[s], s))
            device.clock.now = max(device.clock.now, free_at[slot])
            job = BatchJob(submitted, rng.choice(models), rng.randint(1, max_batch))
            device.submit(slot, job, results.append)
            submitted += 1
            continue
        if not device.running():
            break
        before = len(results)
        device.advance(t_end)
        for r in results[before:]:
            free_at[r.slot] = r.end + rng.uniform(0, gap_s)
    return attach_timelines([BatchRecord.from_result(r, r.start) for r in results])


def replay(spec: DeviceSpec, records: Sequence[BatchRecord], slots: int, seed: int = 0):
    """Each recorded batch submitted at its recorded start (to its slot, or a free one,
    or when one frees), on a simulated device: the simulated records, in end order."""
    device = _device(spec, slots, seed)
    results: list[BatchResult] = []
    waiting: list[BatchRecord] = []
    ordered = sorted(records, key=lambda r: (r.start, r.batch_id))
    t0 = ordered[0].start if ordered else 0.0
    i = 0
    while i < len(ordered) or waiting or device.running():
        t_next = ordered[i].start - t0 if i < len(ordered) else float("inf")
        t_end = device.next_event() or float("inf")
        if t_end < t_next or (waiting and device.running() == slots) or i >= len(ordered):
            if not device.running():
                break
            device.advance(t_end)
        else:
            device.clock.now = max(device.clock.now, t_next)
            waiting.append(ordered[i])
            i += 1
        while waiting and device.running() < slots:
            r = waiting.pop(0)
            slot = r.slot if r.slot < slots and not device.is_busy(r.slot) else None
            if slot is None:
                slot = next(s for s in range(slots) if not device.is_busy(s))
            device.submit(slot, BatchJob(r.batch_id, r.model, r.batch_size), results.append)
    return [BatchRecord.from_result(r, r.start) for r in results]


def latency_table(
    real: Sequence[BatchRecord], simulated: Sequence[BatchRecord], k: int
) -> list[dict]:
    """Per model: real and simulated latency p50 / p99 (ms) at concurrency `k`."""
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"real": [], "sim": []})
    for r in real:
        by[r.model]["real"].append(r.latency)
    for r in simulated:
        by[r.model]["sim"].append(r.latency)
    rows = []
    for model, d in sorted(by.items()):
        row: dict = {"model": model, "k": k, "batches": len(d["real"])}
        for kind in ("real", "sim"):
            values = np.array(d[kind]) * 1e3
            for q in (50, 99):
                row[f"{kind}_p{q}_ms"] = float(np.percentile(values, q)) if len(values) else None
        rows.append(row)
    return rows
