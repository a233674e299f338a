"""The high-priority slot reserve: slots low-priority-only work leaves free while
high-priority requests keep arriving (there is no preemption, so a slot must be there
when one comes).

A reserved slot is worth keeping only if a high-priority request arriving now could
not wait for some slot to free. It can wait as long as its slack: its deadline budget
less its solo latency (the least over the models whose high-priority requests arrived
recently). So the scheduler lends a held slot to low-priority-only work when some slot
frees within that slack: a running batch is planned to end by then, or the batch itself
is (it is then held to end by `wait_limit`). At light load, where batches are short beside the
deadlines, the reserve then costs nothing; under load, where long batches fill the
device, it holds as before.
"""

from __future__ import annotations

import math


class HighReserve:
    def __init__(self, slots: int, window_s: float) -> None:
        self.slots = slots
        self.window_s = window_s
        self.last = -math.inf  # when the last high-priority request arrived
        # Per model: (arrival, slack s) of its latest high-priority request.
        self._slack: dict[str, tuple[float, float]] = {}

    def arrived(self, model: str, now: float, slack: float) -> None:
        """A high-priority request of `model` arrived at `now`; alone it could start as
        late as `now + slack` and still meet its deadline."""
        self.last = now
        self._slack[model] = (now, slack)

    def seen(self, now: float) -> None:
        """A high-priority request arrived whose slack is unknown (refused at once)."""
        self.last = now

    def active(self, now: float) -> bool:
        return self.slots > 0 and now - self.last <= self.window_s

    def held(self, now: float, limit: int) -> int:
        """Slots held back from low-priority-only work now (of `limit` usable)."""
        return min(self.slots, limit - 1) if self.active(now) else 0

    def wait_limit(self, now: float) -> float:
        """Until when a high-priority request arriving now could wait for a slot."""
        horizon = now - self.window_s
        slacks = [s for t, s in self._slack.values() if t >= horizon]
        return now + (min(slacks) if slacks else -math.inf)
