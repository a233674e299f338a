"""What a router sent each replica that has not come back yet, as a forecast state.

A replica's published routing stats reach the router through Serve's controller, a
hundred milliseconds or more after they were taken: longer than the light model's
batches and as long as the heavy one's. The router's own ledger is current: it adds a
request when it picks the replica and drops it when the answer comes back. From it, and
the replica's latency tables, it rebuilds the replica's state now: the oldest requests
started the running batches when the replica last freed a slot (or went from idle to
busy), the rest wait. Pure Python (no Ray), tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from predlat.cluster.state import batched_work
from predlat.scheduling.request import Priority
from predlat.scheduling.routing import DeviceForecast

# A request routed this soon after the replica's last event still joined its batch:
# the handle call takes about this long to arrive.
JOIN_S = 0.001


@dataclass(frozen=True)
class Sent:
    model: str
    rows: int
    priority: Priority
    at: float  # when it was routed (time.time())


@dataclass
class InFlight:
    """One replica's outstanding requests from this router, oldest first."""

    sent: dict[str, Sent] = field(default_factory=dict)  # by Serve's request id
    last_done: float = 0.0  # when an answer last came back from this replica

    def add(self, request_id: str, sent: Sent) -> None:
        self.sent.pop(request_id, None)  # a request routed again goes to the back
        self.sent[request_id] = sent

    def done(self, request_id: str, now: float) -> Sent | None:
        found = self.sent.pop(request_id, None)
        if found is not None:
            self.last_done = max(self.last_done, now)
        return found

    def forecast(self, device: DeviceForecast, max_batch: int, now: float) -> DeviceForecast:
        """`device` (the replica's published state, aged to `now`) with what this ledger
        says is running and queued there, whichever is busier: other routers may send
        the replica work this one does not see."""
        if not self.sent:
            return device
        mine = self._state(device, max_batch, now)
        return _busier(device, mine)

    def _state(self, device: DeviceForecast, max_batch: int, now: float) -> DeviceForecast:
        first = next(iter(self.sent.values()))
        began = max(self.last_done, first.at)  # the running batches started about then
        there = [s for s in self.sent.values() if s.at <= began + JOIN_S]
        picked: list[str] = []  # the models of the running batches: high priority first
        for s in sorted(there, key=lambda s: (s.priority, s.at)):
            if s.model not in picked and len(picked) < device.slots:
                picked.append(s.model)
        running: dict[str, int] = dict.fromkeys(picked, 0)  # rows per running model
        queued: dict[tuple[str, Priority], int] = {}
        for s in self.sent.values():
            if s.at <= began + JOIN_S and s.model in running and running[s.model] < max_batch:
                running[s.model] += s.rows
                continue
            key = (s.model, s.priority)
            queued[key] = queued.get(key, 0) + s.rows
        elapsed = max(0.0, now - began)
        running_s = sum(
            max(0.0, _work(device, m, min(rows, max_batch), max_batch) - elapsed)
            for m, rows in running.items()
        )
        backlog: dict[str, float] = {}
        high_s, high_n = 0.0, 0
        for (model, priority), rows in queued.items():
            work = _work(device, model, rows, max_batch)
            backlog[model] = backlog.get(model, 0.0) + work
            if priority == Priority.HIGH:
                high_s += work
                high_n += rows
        return replace(
            device,
            running_s=running_s,
            running_batches=len(running),
            backlog_s=backlog,
            high_backlog_s=high_s,
            queued=sum(queued.values()),
            high_queued=high_n,
        )


def _work(device: DeviceForecast, model: str, rows: int, max_batch: int) -> float:
    if model not in device.solo_s:
        return 0.0
    slowdown = max(device.slowdown.get(model, 1.0), 1.0)
    return batched_work(device.solo_s[model], rows, max_batch) * slowdown


def _busier(a: DeviceForecast, b: DeviceForecast) -> DeviceForecast:
    """Field by field, the busier of two views of one device."""
    models = set(a.backlog_s) | set(b.backlog_s)
    return replace(
        a,
        running_s=max(a.running_s, b.running_s),
        running_batches=max(a.running_batches, b.running_batches),
        backlog_s={m: max(a.backlog_s.get(m, 0.0), b.backlog_s.get(m, 0.0)) for m in models},
        high_backlog_s=max(a.high_backlog_s, b.high_backlog_s),
        queued=max(a.queued, b.queued),
        high_queued=max(a.high_queued, b.high_queued),
    )


__all__ = ["JOIN_S", "InFlight", "Sent"]
