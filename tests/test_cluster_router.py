"""The predicting router's in-flight ledger against the orders in which Serve reports a
request: chosen, routed (confirmed) and completed. No Ray instance: the router is driven
directly with stand-in replicas that publish real routing stats."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")

from predlat.cluster.messages import Route
from predlat.cluster.router import PredlatRouter
from predlat.cluster.state import ReplicaState
from predlat.scheduling.request import Priority
from predlat.sim import ZOO_LIKE, synthetic_profile


@dataclass(frozen=True)
class ReplicaId:  # (what the router reads of Serve's ReplicaID)
    unique_id: str


@dataclass
class Replica:  # (what the router reads of Serve's RunningReplica)
    replica_id: ReplicaId
    routing_stats: dict = field(default_factory=dict)


def _router_and_replicas() -> tuple[PredlatRouter, list[Replica], str]:
    profile = synthetic_profile(ZOO_LIKE)
    model = next(iter(profile.models))
    replicas = []
    for name in ("a", "b"):
        state = ReplicaState.of(name, profile, [model], 1, 8)
        replicas.append(Replica(ReplicaId(name), state.publish([], time.time())))
    router = PredlatRouter.__new__(PredlatRouter)  # (Serve's constructor needs a cluster)
    router.initialize_state()
    return router, replicas, model


def _pending(model: str, request_id: str) -> SimpleNamespace:
    route = Route(model, 1, Priority.HIGH, time.time() + 10.0)
    return SimpleNamespace(
        args=(route, None),
        kwargs={},
        routing_context=SimpleNamespace(should_backoff=False),
        metadata=SimpleNamespace(internal_request_id=request_id),
    )


def _outstanding(router: PredlatRouter) -> int:
    return sum(len(ledger.sent) for ledger in router._inflight.values())


def test_a_request_is_outstanding_from_its_choice_until_its_answer() -> None:
    router, replicas, model = _router_and_replicas()
    pending = _pending(model, "r1")
    ranked = router._choose(replicas, pending)
    assert _outstanding(router) == 1
    first = ranked[0][0].replica_id
    router.on_request_routed(pending, first, None)
    assert _outstanding(router) == 1  # confirmed, not counted twice
    router.on_request_completed(first, "r1")
    assert _outstanding(router) == 0


def test_routed_reported_after_the_answer_does_not_leak_into_the_ledger() -> None:
    # Serve's gRPC transport can complete a fast request before it reports it routed.
    router, replicas, model = _router_and_replicas()
    for i in range(20):
        pending = _pending(model, f"r{i}")
        first = router._choose(replicas, pending)[0][0].replica_id
        router.on_request_completed(first, f"r{i}")
        router.on_request_routed(pending, first, None)
    assert _outstanding(router) == 0
    assert not router._where


def test_a_request_turned_away_and_routed_again_is_tracked_again() -> None:
    # A replica that rejects a request completes it for the router; Serve then asks
    # the router again with the same request id.
    router, replicas, model = _router_and_replicas()
    pending = _pending(model, "r1")
    first = router._choose(replicas, pending)[0][0].replica_id
    router.on_request_completed(first, "r1")
    again = router._choose(replicas, pending)[0][0].replica_id
    router.on_request_routed(pending, again, None)
    assert _outstanding(router) == 1
    router.on_request_completed(again, "r1")
    assert _outstanding(router) == 0
