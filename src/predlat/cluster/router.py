"""A Ray Serve request router that predicts: each request goes to the replica forecast to
finish it soonest among those forecast to meet its deadline (the shared rule of
predlat.scheduling.routing), reading each replica's published routing stats plus what
this router sent it since those stats were taken.

Serve sends the router class to the controller by value, so the router keeps shared
records (decision times) in another module, which travels by reference.

When no replica is forecast to meet the deadline, the router marks the request refused
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
from predlat.cluster.messages import Route
from predlat.cluster.state import device_forecast
from predlat.scheduling.routing import DeviceForecast, Routed, after_routing, rank


def find_route(pending: PendingRequest) -> Route | None:
    route = pending.kwargs.get("route") if pending.kwargs else None
    if route is None:
        route = next((a for a in pending.args if isinstance(a, Route)), None)
    return route if isinstance(route, Route) else None


class PredlatRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._routed: dict[ReplicaID, Routed] = {}
        self._seen_seq: dict[ReplicaID, int] = {}
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
        by_name: dict[str, RunningReplica] = {}
        devices: list[DeviceForecast] = []
        unknown: list[RunningReplica] = []
        for replica in candidates:
            forecast = self._forecast(replica)
            if forecast is None:
                unknown.append(replica)  # no stats yet (just started): try it last
                continue
            by_name[forecast.name] = replica
            devices.append(forecast)
        if not devices:
            return [candidates]
        routed = {d.name: self._routed.get(by_name[d.name].replica_id, Routed()) for d in devices}
        decision = rank(devices, route.request(), routed)
        if decision.refusal is not None:
            if unknown:  # a fresh replica may still make it: let it decide
                return [unknown]
            route.refusal = decision.refusal
            self.refused += 1
            return [candidates]
        return [[by_name[c.name]] for c in decision.ranked] + ([unknown] if unknown else [])

    def _forecast(self, replica: RunningReplica) -> DeviceForecast | None:
        """The replica's published state, aged to now; what was routed to it before that
        state was taken is in it, so it leaves this router's own count."""
        stats = replica.routing_stats
        if not stats or "seq" not in stats:
            return None
        rid = replica.replica_id
        if self._seen_seq.get(rid) != stats["seq"]:
            self._seen_seq[rid] = stats["seq"]
            self._routed.setdefault(rid, Routed()).forget_before(float(stats["time"]))
        return device_forecast(stats, name=rid.unique_id, now=time.time())

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        route = find_route(pending_request)
        replica = self.curr_replicas.get(replica_id)
        stats = replica.routing_stats if replica is not None else None
        if route is None or not stats or "seq" not in stats or route.refusal is not None:
            return
        work = after_routing(device_forecast(stats, name=replica_id.unique_id), route.request())
        self._routed.setdefault(replica_id, Routed()).add(work, route.priority, time.time())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._routed.pop(replica_id, None)
        self._seen_seq.pop(replica_id, None)


__all__ = ["PredlatRouter", "find_route"]
