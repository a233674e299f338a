"""What a simulated cluster's `predlat` route reads of one device, kept between events.

The route ranks every device by `predlat.scheduling.routing.completion_s` of the
`DeviceForecast` the device would publish. Only the running batches' remaining time
depends on the clock; the rest (queued work, slowdowns, counts) changes only when the
device's scheduler sees an event. Rebuilding and ranking every device's forecast at
every arrival cost most of a many-device simulation, so a `RouteView` keeps the rest
until the device's next event, and `completion` repeats `completion_s`'s arithmetic in
the same order: the same floats, so the same device is chosen (a test checks it against
`rank` on every arrival).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouteView:
    """A device's `DeviceForecast` less its `running_s`, which `running_s(now)` gives."""

    slots: int
    ends: tuple[float, ...]  # running batches' mean forecast ends, in the scheduler's order
    backlog_s: dict[str, float]  # forecast queued work per model (DeviceForecast's)
    backlog_total: float  # sum(backlog_s.values()), summed as completion_s sums it
    queued: int
    slowdown: dict[str, float]  # per model, of its running batches

    def running_s(self, now: float) -> float:
        left = 0.0
        for end in self.ends:
            left += max(0.0, end - now)
        return left

    def completion_s(self, high: bool, now: float, service_s: float) -> float:
        """`routing.completion_s` of this device's forecast at `now`, for a request
        whose `routing.service_s` there is `service_s` (`high`: of high priority; a
        simulated device publishes no high-priority backlog)."""
        running_s = 0.0  # (running_s(now), inline: this runs per device per arrival)
        for end in self.ends:
            running_s += max(0.0, end - now)
        if high:
            ahead = running_s + 0.0
            waiting = 0
        else:
            ahead = running_s + self.backlog_total
            waiting = self.queued
        free = len(self.ends) + waiting < self.slots
        wait = 0.0 if free else ahead / self.slots
        return wait + service_s
