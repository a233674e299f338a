"""Per-model request queues: high priority before low, earliest deadline first within a
priority. Sorted lists (not heaps) because batching reads a prefix in order and a
prefix is removed at once; with at most a few thousand queued requests the memmove of
`insort`/`del` costs less than the Python-level work a heap would add."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from predlat.scheduling.request import Priority, Request


class ModelQueue:
    """The queued requests of one model, one deadline-sorted list per priority."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lists: tuple[list[tuple[float, int]], ...] = tuple([] for _ in Priority)
        self._requests: dict[int, Request] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def push(self, request: Request) -> None:
        bisect.insort(self._lists[request.priority], (request.deadline, request.request_id))
        self._requests[request.request_id] = request

    def head(self) -> Request | None:
        """The most urgent request: earliest deadline of the highest non-empty priority."""
        for entries in self._lists:
            if entries:
                return self._requests[entries[0][1]]
        return None

    def heads(self) -> Iterator[Request]:
        """The earliest-deadline request of each non-empty priority."""
        for entries in self._lists:
            if entries:
                yield self._requests[entries[0][1]]

    def peek(self, priority: Priority) -> Request | None:
        entries = self._lists[priority]
        return self._requests[entries[0][1]] if entries else None

    def count(self, priority: Priority) -> int:
        return len(self._lists[priority])

    def ordered(self) -> Iterator[Request]:
        """All requests in dispatch order (high first, EDF within a priority)."""
        for entries in self._lists:
            for _, request_id in entries:
                yield self._requests[request_id]

    def prefix(self, max_rows: int) -> list[Request]:
        """The longest prefix in dispatch order whose rows fit in `max_rows` (always at
        least the head, even if it alone is larger: a request is never split)."""
        out: list[Request] = []
        rows = 0
        for request in self.ordered():
            if out and rows + request.size > max_rows:
                break
            out.append(request)
            rows += request.size
            if rows >= max_rows:
                break
        return out

    def remove_prefix(self, requests: list[Request]) -> None:
        """Remove requests previously returned by `prefix` (they are the list fronts)."""
        counts = [0] * len(Priority)
        for request in requests:
            counts[request.priority] += 1
            del self._requests[request.request_id]
        for priority, count in enumerate(counts):
            if count:
                del self._lists[priority][:count]

    def pop_head(self, priority: Priority) -> Request:
        _, request_id = self._lists[priority].pop(0)
        return self._requests.pop(request_id)

    def pop_all(self) -> list[Request]:
        out = list(self.ordered())
        for entries in self._lists:
            entries.clear()
        self._requests.clear()
        return out
