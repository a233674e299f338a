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
        # Plain tuples, not records: a batch end scans them all on the decision path.
        self._running: dict[int, tuple[str, int, float]] = {}
        # (end, start, batch_id, model, batch_size) of recently finished batches
        self._done: deque[tuple[float, float, int, str, int]] = deque()

    def started(self, batch_id: int, model: str, batch_size: int, start: float) -> None:
        self._running[batch_id] = (model, batch_size, start)

    def finished(self, record: BatchRecord) -> BatchRecord:
        """`record` with its timeline attached (the one given is kept if non-empty)."""
        self._running.pop(record.batch_id, None)
        if not record.timeline:
            record = record.with_timeline(self._overlaps(record))
        self._done.append(
            (record.end, record.start, record.batch_id, record.model, record.batch_size)
        )
        self._prune()
        return record

    def _overlaps(self, rec: BatchRecord) -> tuple[Overlap, ...]:
        start, end = rec.start, rec.end
        # (overlap start, batch id, model, size, overlap end): sorted as tuples, which is
        # the (start, batch id) order of the timeline, since batch ids are unique.
        found: list[tuple[float, int, str, int, float]] = []
        for o_end, o_start, batch_id, model, size in self._done:
            lo = start if start > o_start else o_start
            hi = end if end < o_end else o_end
            if hi > lo:
                found.append((lo, batch_id, model, size, hi))
        for batch_id, (model, size, o_start) in self._running.items():
            lo = start if start > o_start else o_start
            if end > lo:
                found.append((lo, batch_id, model, size, end))
        found.sort()
        return tuple([Overlap(b, m, n, lo, hi) for lo, b, m, n, hi in found])

    def _prune(self) -> None:
        # Every future finisher is running now and started no earlier than the oldest
        # running start: finished batches that ended before it can overlap nothing more.
        if not self._running:
            self._done.clear()
            return
        horizon = min([start for _, _, start in self._running.values()])
        done = self._done
        while done and done[0][0] <= horizon:
            done.popleft()
        if len(done) > 256:  # out-of-order ends: drop stale entries anywhere
            self._done = deque(d for d in done if d[0] > horizon)
