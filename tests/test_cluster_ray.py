"""predlat on a local Ray Serve instance the test starts and stops itself (loopback only):
the front door answers v2 HTTP through the predicting router, routing stats are
published, and a replica killed under load loses no request and answers none twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from predlat.cluster.local import use_loopback

use_loopback()  # before Ray is imported: the test instance talks over 127.0.0.1
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from predlat.cluster.deployment import ClusterConfig, deploy  # noqa: E402
from predlat.cluster.frontdoor import ClusterRuntime  # noqa: E402
from predlat.cluster.messages import DECISION_TIMES  # noqa: E402
from predlat.cluster.replica import ReplicaConfig  # noqa: E402
from predlat.errors import ConfigError  # noqa: E402
from predlat.models import resolve_models  # noqa: E402
from predlat.scheduling.request import Priority  # noqa: E402
from predlat.serving.app import ServerConfig, create_app  # noqa: E402
from predlat.serving.server import BackgroundServer  # noqa: E402

DEADLINE_S = 2.0  # generous: the machine is shared, these check plumbing, not speed


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[object, ClusterRuntime]]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PREDLAT_CACHE_DIR": os.environ["PREDLAT_CACHE_DIR"]}},
    )
    serve.start(proxy_location="Disabled")  # the front door is predlat's own app
    specs = resolve_models(["tiny", "roberta"])
    handle = deploy(
        ReplicaConfig(("tiny", "roberta")), ClusterConfig(replicas=2, stats_period_s=0.05)
    )
    runtime = ClusterRuntime(handle, {s.name: s for s in specs})
    try:
        yield handle, runtime
    finally:
        runtime.close()
        serve.shutdown()
        ray.shutdown()


def _x(rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, 16), dtype=np.float32)}


def test_http_front_door_answers_through_the_router(cluster) -> None:
    _, runtime = cluster
    import httpx

    specs = resolve_models(["tiny"])
    app = create_app(runtime, specs, ServerConfig({"tiny": DEADLINE_S}))
    body = {
        "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}],
        "parameters": {"priority": 1},
    }
    with BackgroundServer(app) as server:
        for _ in range(5):
            r = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["parameters"]["predlat_status"] in ("met", "missed")
            assert doc["parameters"]["predlat_priority"] == "high"
    assert DECISION_TIMES, "the predicting router made no decision"


@pytest.mark.parametrize("transport", ["ray", "grpc"])
def test_both_transports_carry_requests_and_answers(cluster, transport) -> None:
    handle, _ = cluster
    door = ClusterRuntime(handle, {s.name: s for s in resolve_models(["tiny"])}, transport)
    try:
        outcome = door.submit("tiny", _x(2), deadline_s=DEADLINE_S).result(timeout=30)
    finally:
        door.close()
    assert outcome.status in ("met", "missed"), outcome
    assert outcome.outputs is not None and outcome.outputs["y"].shape[0] == 2


def test_unknown_transport_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown transport 'http'.*grpc, ray"):
        ClusterRuntime(None, {}, "http")  # type: ignore[arg-type]


def test_replicas_publish_routing_stats(cluster) -> None:
    handle, _ = cluster
    stats = handle.record_routing_stats.remote().result(timeout_s=10)
    assert stats["slots"] == 1
    assert set(stats["solo_s"]) == {"tiny", "roberta"}
    for key in ("backlog_s", "running_batches", "predictor_version", "seq"):
        assert key in stats


def test_unmeetable_deadline_is_refused_with_a_reason(cluster) -> None:
    _, runtime = cluster
    time.sleep(0.2)  # let every replica publish stats once
    outcome = runtime.submit("tiny", _x(), deadline_s=1e-7).result(timeout=10)
    assert outcome.status == "rejected"
    assert outcome.reason


def _replica_pids(handle) -> set[int]:
    return {handle.pid.remote().result(timeout_s=10) for _ in range(20)}


def _wait_for_two_replicas(handle, gone: int | None = None) -> set[int]:
    """Serve restarts a killed replica and routing resumes using it."""
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        seen = _replica_pids(handle)
        if len(seen) == 2 and gone not in seen:
            return seen
        time.sleep(0.5)
    pytest.fail("the killed replica did not come back")


def _burst_and_kill(handle, runtime, victim: int) -> tuple[list, int]:
    """A burst that queues work on both replicas, one replica killed once some answers
    are back (so the rest are mid-flight); the outcomes and how many calls were retried."""
    answered_before, retried_before = runtime.counts.answered, runtime.counts.retried
    rng = np.random.default_rng(0)
    x = {"input_ids": rng.integers(0, 100, (1, 32)), "attention_mask": np.ones((1, 32))}
    x = {k: v.astype(np.int64) for k, v in x.items()}
    futures = [
        runtime.submit(
            "roberta",
            x,
            deadline_s=DEADLINE_S * (0.02 if i % 10 == 0 else 1.0),  # some too tight to retry
            priority=Priority.HIGH if i % 3 == 0 else Priority.LOW,
        )
        for i in range(300)
    ]
    futures[1].result(timeout=30)  # the replicas are working through the burst now
    os.kill(victim, signal.SIGKILL)
    outcomes = [f.result(timeout=60) for f in futures]
    assert runtime.counts.answered - answered_before == len(outcomes)  # once each, none lost
    return outcomes, runtime.counts.retried - retried_before


def test_killed_replica_loses_no_request_and_answers_none_twice(cluster) -> None:
    handle, runtime = cluster
    pids = _replica_pids(handle)
    assert len(pids) == 2, f"expected 2 replica processes, saw {pids}"
    # Whether a kill finds the victim mid-request depends on the router's choices and
    # the OS: up to three bursts, each fully accounted, until one catches it.
    retried, seen = 0, []
    for _ in range(3):
        victim = sorted(pids)[0]
        outcomes, retried = _burst_and_kill(handle, runtime, victim)
        seen.append(Counter(o.status for o in outcomes))
        for o in outcomes:
            assert o.status in ("met", "missed", "rejected"), o
            if o.status == "rejected":
                assert o.reason
        assert sum(o.status in ("met", "missed") for o in outcomes) > 0
        pids = _wait_for_two_replicas(handle, gone=victim)
        if retried:
            break
    assert retried > 0, f"no kill caught a request mid-flight in three bursts: {seen}"
