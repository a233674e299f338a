"""A Ray Serve request router that predicts: each request goes to the replica forecast to
finish it soonest among those forecast to meet its deadline (the shared rule of
predlat.scheduling.routing), from each replica's published routing stats and, fresher,
the requests this router sent it that have not come back (predlat.cluster.inflight).

Serve sends the router class to the controller by value, so the router keeps shared
records (decision times) in another module, which travels by reference.

Replicas not forecast to meet the deadline are still offered, last: each replica's own
scheduler admits what it can still make. Only when no replica could make it even at the
lower bound (`predlat.scheduling.routing.place`) does the router mark the request refused
with the reason; the replica answers it 'rejected' at once without running it (Serve's
router has no way to fail a request itself: it must name a replica).
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from predlat.cluster import messages
from predlat.cluster.inflight import InFlight, Sent
from predlat.cluster.messages import Route
from predlat.cluster.state import device_forecast
from predlat.scheduling.routing import DeviceForecast, place

FINISHED_KEPT = 4096  # answered request ids remembered (see PredlatRouter._finished)


def find_route(pending: PendingRequest) -> Route | None:
    route = pending.kwargs.get("route") if pending.kwargs else None
    if route is None:
        route = next((a for a in pending.args if isinstance(a, Route)), None)
    return route if isinstance(route, Route) else None


class PredlatRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._inflight: dict[ReplicaID, InFlight] = {}
        self._where: dict[str, ReplicaID] = {}  # request id -> the replica it went to
        # Requests whose answers came back, newest last (bounded). Serve may report a
        # request routed after its answer is in (a fast answer over its gRPC transport,
        # seen live): it must not re-enter the ledger then, where nothing would ever
        # take it out and the replica would look busier with every such request.
        self._finished: dict[str, None] = {}
        self.refused = 0

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        began = time.perf_counter()
        try:
            return self._choose(candidate_replicas, pending_request)
        finally:
            messages.DECISION_TIMES.append(time.perf_counter() - began)

    def _choose(
        self, candidates: list[RunningReplica], pending: PendingRequest | None
    ) -> list[list[RunningReplica]]:
        route = find_route(pending) if pending is not None else None
        if pending is not None:  # all full: back off instead of spinning
            pending.routing_context.should_backoff = True
        if route is None or not candidates:
            return [candidates]
        now = time.time()
        by_name: dict[str, RunningReplica] = {}
        devices: list[DeviceForecast] = []
        unknown: list[RunningReplica] = []
        for replica in candidates:
            forecast = self._forecast(replica, now)
            if forecast is None:
                unknown.append(replica)  # no stats yet (just started): try it last
                continue
            by_name[forecast.name] = replica
            devices.append(forecast)
        if not devices:
            return [candidates]
        decision = place(devices, route.request(now))
        if decision.refusal is not None:
            if unknown:  # a fresh replica may still make it: let it decide
                return [unknown]
            route.refusal = decision.refusal
            self.refused += 1
            return [candidates]
        ranked = [by_name[c.name] for c in decision.ranked]
        # Counted at once on the first choice (Serve confirms it once the replica
        # accepts, in on_request_routed), so that decisions in between see it. (A
        # request Serve routes again after a replica turned it away is live again.)
        self._finished.pop(pending.metadata.internal_request_id, None)
        self._sent(pending, route, ranked[0].replica_id, now)
        return [[r] for r in ranked] + ([unknown] if unknown else [])

    def _forecast(self, replica: RunningReplica, now: float) -> DeviceForecast | None:
        """The replica's published state aged to now, and what this router sent it that
        has not come back, whichever is busier."""
        stats = replica.routing_stats
        if not stats or "seq" not in stats:
            return None
        device = device_forecast(stats, name=replica.replica_id.unique_id, now=now)
        ledger = self._inflight.get(replica.replica_id)
        if ledger is None:
            return device
        return ledger.forecast(device, int(stats.get("max_batch", 1)), now)

    def _sent(self, pending: PendingRequest, route: Route, to: ReplicaID, now: float) -> None:
        request_id = pending.metadata.internal_request_id
        was = self._where.get(request_id)
        if was == to:
            return
        if was is not None:  # Serve tried another replica than the first choice
            self._inflight[was].sent.pop(request_id, None)
        self._where[request_id] = to
        sent = Sent(route.model, route.rows, route.priority, now)
        self._inflight.setdefault(to, InFlight()).add(request_id, sent)

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        route = find_route(pending_request)
        finished = pending_request.metadata.internal_request_id in self._finished
        if route is not None and route.refusal is None and not finished:
            self._sent(pending_request, route, replica_id, time.time())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._finished[internal_request_id] = None
        if len(self._finished) > FINISHED_KEPT:
            del self._finished[next(iter(self._finished))]
        where = self._where.pop(internal_request_id, None)
        ledger = self._inflight.get(where or replica_id)
        if ledger is not None:
            ledger.done(internal_request_id, time.time())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        lost = self._inflight.pop(replica_id, None)
        for request_id in lost.sent if lost is not None else ():
            self._where.pop(request_id, None)


__all__ = ["PredlatRouter", "find_route"]
