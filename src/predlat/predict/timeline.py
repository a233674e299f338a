"""Co-location timelines of finished batches, built from start and end events."""

from __future__ import annotations

from collections import deque

from predlat.traces.records import BatchRecord, Overlap


class TimelineTracker:
    """Remembers running batches and recently finished ones, so a batch that finishes
    gets its full timeline: every co-runner with the interval it overlapped.

    A running co-runner's start is its dispatch time (its real start is known only when
    it ends); the gap is the dispatch lag, microseconds on a healthy runtime."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[str, int, float]] = {}
        self._done: deque[BatchRecord] = deque()

    def started(self, batch_id: int, model: str, batch_size: int, start: float) -> None:
        self._running[batch_id] = (model, batch_size, start)

    def finished(self, record: BatchRecord) -> BatchRecord:
        """`record` with its timeline attached (the one given is kept if non-empty)."""
        self._running.pop(record.batch_id, None)
        if not record.timeline:
            r = record
            record = BatchRecord(
                r.batch_id,
                r.model,
                r.batch_size,
                r.slot,
                r.dispatch,
                r.start,
                r.end,
                self._overlaps(r),
                r.device,
            )
        self._done.append(record)
        self._prune()
        return record

    def _overlaps(self, rec: BatchRecord) -> tuple[Overlap, ...]:
        out: list[Overlap] = []
        for other in self._done:
            lo, hi = max(rec.start, other.start), min(rec.end, other.end)
            if hi > lo:
                out.append(Overlap(other.batch_id, other.model, other.batch_size, lo, hi))
        for batch_id, (model, size, start) in self._running.items():
            lo = max(rec.start, start)
            if rec.end > lo:
                out.append(Overlap(batch_id, model, size, lo, rec.end))
        out.sort(key=lambda o: (o.start, o.batch_id))
        return tuple(out)

    def _prune(self) -> None:
        # Every future finisher is running now and started no earlier than the oldest
        # running start: finished batches that ended before it can overlap nothing more.
        if not self._running:
            self._done.clear()
            return
        horizon = min(start for _, _, start in self._running.values())
        while self._done and self._done[0].end <= horizon:
            self._done.popleft()
        if len(self._done) > 256:  # out-of-order ends: drop stale entries anywhere
            self._done = deque(r for r in self._done if r.end > horizon)
