"""A replica's published routing state, and reading it back (no Ray involved)."""

from __future__ import annotations

import json

import pytest

from predlat.cluster.state import ReplicaState, device_forecast
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.routing import RouteRequest, completion_s
from predlat.scheduling.scheduler import RunningInfo
from predlat.sim import SyntheticModel, synthetic_profile
from predlat.traces.records import BatchRecord

PROFILE = synthetic_profile({"a": SyntheticModel(0.002, 0.0005), "b": SyntheticModel(0.010, 0.002)})


def state() -> ReplicaState:
    return ReplicaState.of("r0", PROFILE, ["a", "b"], slots=1, max_batch=4)


def running(model: str, rows: int, end: float, priority=Priority.LOW) -> RunningInfo:
    reqs = tuple(Request(i, model, 0.0, 1.0, priority) for i in range(rows))
    return RunningInfo(0, 0, model, rows, reqs, 1.0, 0.0, end, end, priority == Priority.HIGH)


def test_idle_replica_publishes_an_empty_backlog() -> None:
    stats = state().publish([], now=0.0)
    json.dumps(stats)  # Serve ships it between processes
    assert stats["backlog_s"] == {} and stats["running_batches"] == 0
    assert stats["solo_s"]["a"]["1"] == pytest.approx(0.002)
    assert stats["seq"] == 1


def test_queued_rows_become_forecast_batches_and_running_ones_do_not() -> None:
    s = state()
    s.arrived("a", Priority.LOW, 2)  # running
    s.arrived("b", Priority.LOW, 5)  # queued: one batch of 4, one of 1
    s.arrived("b", Priority.HIGH, 1)  # queued, high
    stats = s.publish([running("a", 2, end=0.010)], now=0.004)
    assert stats["running_s"] == pytest.approx(0.006)
    assert stats["running_batches"] == 1
    assert "a" not in stats["backlog_s"]
    four, one = 0.010 + 3 * 0.002, 0.010
    assert stats["backlog_s"]["b"] == pytest.approx(four + one + one)
    assert stats["high_backlog_s"] == pytest.approx(one)
    assert stats["queued"] == 6 and stats["high_queued"] == 1
    s.answered("b", Priority.HIGH, 1)
    assert s.publish([], now=0.0)["high_queued"] == 0


def test_finished_batches_move_the_slowdown_and_the_predictor_version() -> None:
    s = state()
    s.on_batch(BatchRecord(0, "a", 1, 0, 0.0, 0.0, 0.004), forecast_s=0.003)  # 2x solo
    stats = s.publish([], now=0.0)
    assert stats["predictor_version"] == 1
    assert stats["slowdown"] == {"a": pytest.approx(2.0)}  # the first batch sets it
    s.on_batch(BatchRecord(1, "a", 1, 0, 0.0, 0.0, 0.002), forecast_s=0.003)  # solo
    assert 1.0 < s.publish([], now=0.0)["slowdown"]["a"] < 2.0


def test_published_state_reads_back_into_the_routing_rule() -> None:
    s = state()
    s.arrived("b", Priority.LOW, 1)
    forecast = device_forecast(s.publish([running("b", 1, end=0.010)], now=0.0))
    assert forecast.name == "r0" and forecast.slots == 1
    assert forecast.solo_s["b"][4] == pytest.approx(0.016)
    done = completion_s(forecast, RouteRequest("a", 1, Priority.LOW, 1.0))
    assert done == pytest.approx(0.010 + 0.002)


def test_stale_stats_age_the_running_batches() -> None:
    s = state()
    s.arrived("b", Priority.LOW, 1)
    stats = s.publish([running("b", 1, end=0.010)], now=0.0)
    fresh = device_forecast(stats, now=stats["time"])
    later = device_forecast(stats, now=stats["time"] + 0.004)
    gone = device_forecast(stats, now=stats["time"] + 1.0)
    assert fresh.running_s == pytest.approx(0.010)
    assert later.running_s == pytest.approx(0.006, abs=1e-6)
    assert gone.running_s == 0.0


def test_published_forecast_error_is_the_mean_of_recent_batches() -> None:
    s = state()
    assert s.publish([], now=0.0)["forecast_error"] is None  # no batch yet
    assert s.publish([], now=0.0)["forecast_ratio"] is None
    for i, forecast in enumerate((0.004, 0.005, 0.002)):  # actual 0.004 each
        s.on_batch(BatchRecord(i, "a", 1, 0, 0.0, 0.0, 0.004), forecast_s=forecast)
    stats = s.publish([], now=0.0)
    assert stats["forecast_error"] == pytest.approx(0.25)  # 0, 0.25, 0.5
    assert stats["forecast_ratio"] == pytest.approx(1.0)  # 1, 0.8, 2: the median
    for i in range(300):  # the window keeps only recent batches: exact forecasts now
        s.on_batch(BatchRecord(3 + i, "a", 1, 0, 0.0, 0.0, 0.004), forecast_s=0.004)
    assert s.publish([], now=0.0)["forecast_error"] == pytest.approx(0.0)


def test_forecast_error_counts_from_the_decision_as_the_forecast_does() -> None:
    s = state()  # the slot started 1 ms after the decision (a hand-off that waited)
    s.on_batch(BatchRecord(0, "a", 1, 0, 0.0, 0.001, 0.004), forecast_s=0.004)
    stats = s.publish([], now=0.0)
    assert stats["forecast_error"] == pytest.approx(0.0)
    assert stats["forecast_ratio"] == pytest.approx(1.0)
