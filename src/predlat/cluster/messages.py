"""What travels with each request from the front door, through the router, to a replica."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.routing import RouteRequest

# How the front door's handle calls reach a replica: Serve's gRPC transport, or Ray actor
# tasks (here, not in frontdoor.py, so that the CLI can offer them without importing Ray).
TRANSPORTS = ("grpc", "ray")

# Seconds each routing decision took, newest last (read by benchmarks and tests in the
# process that owns the handle, where the router runs).
DECISION_TIMES: collections.deque[float] = collections.deque(maxlen=100_000)


@dataclass
class Route:
    """A request's routing facts. `deadline_at` is wall-clock (time.time()) so it holds
    across processes and retries. `refusal`: set by the router when no replica is
    forecast to meet the deadline; the replica then answers 'rejected' without running."""

    model: str
    rows: int
    priority: Priority
    deadline_at: float
    attempt: int = 0
    refusal: str | None = None

    def remaining_s(self, now: float | None = None) -> float:
        return self.deadline_at - (time.time() if now is None else now)

    def request(self, now: float | None = None) -> RouteRequest:
        return RouteRequest(self.model, self.rows, self.priority, self.remaining_s(now))

    def unrun(self, status: str, reason: str) -> RequestOutcome:
        """The outcome of this request when no replica ran it."""
        now = time.time()
        request = Request(-1, self.model, now, self.deadline_at, self.priority, self.rows)
        return RequestOutcome.unrun(request, status, reason)
