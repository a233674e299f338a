"""A few numbers to sanity-check a trace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


@dataclass(frozen=True)
class TraceSummary:
    batches: int
    mean_batch_size: float
    mean_concurrency: float  # batches running on average while the device is busy
    overlapped_frac: float  # batches with at least one co-runner
    mean_slowdown: float  # latency / profiled solo latency
    busy_frac: float  # share of the trace's span with at least one batch running
    per_model: dict[str, int]  # batches per model


def summarize(records: Sequence[BatchRecord], profile: Profile | None = None) -> TraceSummary:
    """A few numbers to sanity-check a trace."""
    if not records:
        return TraceSummary(0, 0.0, 0.0, 0.0, float("nan"), 0.0, {})
    busy = _union_length([(r.start, r.end) for r in records])
    total = sum(r.latency for r in records)
    span = max(r.end for r in records) - min(r.start for r in records)
    slowdowns = (
        [r.latency / profile.solo_latency(r.model, r.batch_size) for r in records]
        if profile is not None
        else []
    )
    per_model: dict[str, int] = {}
    for r in records:
        per_model[r.model] = per_model.get(r.model, 0) + 1
    return TraceSummary(
        batches=len(records),
        mean_batch_size=float(np.mean([r.batch_size for r in records])),
        mean_concurrency=total / busy if busy > 0 else 0.0,
        overlapped_frac=float(np.mean([bool(r.timeline) for r in records])),
        mean_slowdown=float(np.mean(slowdowns)) if slowdowns else float("nan"),
        busy_frac=busy / span if span > 0 else 0.0,
        per_model=dict(sorted(per_model.items())),
    )


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total
