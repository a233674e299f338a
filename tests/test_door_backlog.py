"""The door's backlog forecast: work ahead of a new request at its priority laid on the
slots, calibrated online against answers; and, end to end, a request forecast to be
late refused before its body is read, at once, with a reason, nothing lost."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest

from predlat.errors import ConfigError
from predlat.scheduling.config import RunningInfo
from predlat.scheduling.request import Priority, Request
from predlat.serving.admission import BELOW_FORECAST, Door, DoorPolicy, Ticket
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.backlog import BacklogForecast, LoopLag, OnlineQuantile
from predlat.serving.server import BackgroundServer
from predlat.traces.records import BatchRecord

HIGH, LOW = Priority.HIGH, Priority.LOW
SOLO = {1: 0.01, 2: 0.015, 4: 0.02, 8: 0.04}


def solo(model: str, rows: int) -> float:
    return SOLO[rows] if rows in SOLO else 0.01 * rows


def backlog(running: list[RunningInfo] | None = None, slots: int = 2, **kw) -> BacklogForecast:
    return BacklogForecast(solo, lambda: running or [], lambda: 0.0, slots, 4, **kw)


def batch(model: str, end: float, *priorities: Priority) -> RunningInfo:
    requests = tuple(Request(i, model, 0.0, 1.0, p) for i, p in enumerate(priorities))
    return RunningInfo(0, 0, model, len(requests), requests, 1.0, 0.0, end, end, False)


def test_alone_a_request_takes_its_own_batch():
    assert backlog()("m", LOW, {}) == pytest.approx(0.01)


def test_work_ahead_drains_over_the_slots_in_full_batches():
    # 8 requests ahead: 2 batches of 4 (20 ms each) start now on 2 slots; the new one
    # runs alone once the first ends.
    assert backlog()("m", LOW, {("m", LOW): 8}) == pytest.approx(0.02 + 0.01)
    # 9 ahead: the new request rides with the ninth, in a batch of 2
    assert backlog()("m", LOW, {("m", LOW): 9}) == pytest.approx(0.02 + 0.015)
    one_slot = backlog(slots=1)
    assert one_slot("m", LOW, {("m", LOW): 8, ("n", LOW): 2}) == pytest.approx(0.04 + 0.015 + 0.01)


def test_high_priority_waits_only_for_high_priority_and_running_work():
    running = [batch("m", 0.05, LOW), batch("m", 0.03, LOW)]
    waiting = {("m", LOW): 2 + 12, ("m", HIGH): 1}  # running ones are still in flight
    forecast = backlog(running)
    assert forecast("m", HIGH, waiting) == pytest.approx(0.03 + 0.015)
    # low: 13 queued ahead (2 of the 15 run) as 3 batches of 4 over the slots, then 2 rows
    assert forecast("m", LOW, waiting) == pytest.approx(0.07 + 0.015)


def test_observed_batch_sizes_and_slowdown_reshape_the_forecast():
    forecast = backlog(slots=1)
    for i in range(50):  # the scheduler runs batches of 2, twice slower than solo
        forecast.on_batch(BatchRecord(i, "m", 2, 0, 0.0, 0.0, 0.03))
    assert forecast._batch("m") == 2
    assert forecast("m", LOW, {("m", LOW): 2}) == pytest.approx(2 * (0.015 + 0.01))


def test_calibration_scales_by_a_high_quantile_of_answer_over_forecast():
    forecast = backlog()
    for ratio in np.linspace(1.0, 3.0, 200):
        forecast.observe(0.01, 0.01 * ratio)
    assert 2.9 < forecast.scale <= 3.0
    assert forecast("m", LOW, {}) == pytest.approx(0.01 * forecast.scale)
    assert forecast.raw("m", LOW, {}) == pytest.approx(0.01)


def test_online_quantile_waits_for_enough_samples_and_rejects_nonsense():
    q = OnlineQuantile(0.5, window=8, every=1, min_samples=4)
    for x in (5.0, 5.0, 5.0):
        q.add(x)
    assert q.value == 1.0 and len(q) == 3
    q.add(5.0)
    assert q.value == 5.0
    with pytest.raises(ConfigError, match="quantile"):
        OnlineQuantile(1.5)


def test_a_broken_forecast_has_no_opinion():
    broken = BacklogForecast(lambda m, r: 1 / 0, list, lambda: 0.0, 1, 4)
    assert broken("m", LOW, {}) is None
    assert Door(DoorPolicy(), broken).check("m", 0.001) is None


def test_door_refuses_past_the_calibrated_forecast_and_learns_near_the_deadline():
    forecast = backlog(slots=1)
    door = Door(DoorPolicy(max_inflight=0), forecast)
    tickets = []
    for _ in range(6):
        ticket = door.admit("m", 0.1)
        assert isinstance(ticket, Ticket)
        tickets.append(ticket)
    # 6 in flight: a batch of 4 (20 ms), then its own batch of 3 (30 ms)
    refused = door.admit("m", 0.045)
    assert not isinstance(refused, Ticket)
    assert refused.status == 503 and refused.reason == BELOW_FORECAST
    assert refused.retry_after_s == 1 and "50.0 ms" in refused.message
    # it learns from the first (nothing ahead) and those forecast near their deadline
    learnt = [t.forecast_s for t in tickets]
    assert learnt[0] == pytest.approx(0.01) and learnt[1:5] == [None] * 4
    assert learnt[5] == pytest.approx(0.02 + 0.015)
    for ticket in tickets:
        door.leave(ticket, answered_s=0.5)
    assert door.inflight == 0 and door.waiting == {("m", LOW): 0} and len(forecast.ratio) == 2


def test_a_door_that_learnt_to_refuse_everyone_still_lets_one_in_when_idle():
    forecast = backlog()
    for _ in range(64):
        forecast.observe(0.01, 0.2)  # forecasts 20x too short: scale at its bound
    door = Door(DoorPolicy(max_inflight=0), forecast)
    first = door.admit("m", 0.05)  # nothing ahead: unscaled, let in
    assert isinstance(first, Ticket)
    assert not isinstance(door.admit("m", 0.05), Ticket)  # one ahead: scaled, refused


# -- end to end ---------------------------------------------------------------------------


def test_forecast_late_request_refused_before_its_body_quickly_and_nothing_lost(runtime, spec):
    """Three requests held in flight make the fourth's forecast (4 x 100 ms on one slot)
    exceed its 250 ms deadline: refused from the headers alone (its body is not even
    JSON), at once, with a reason and Retry-After; every request is accounted for."""
    forecast = BacklogForecast(lambda m, r: 0.1, list, time.perf_counter, 1, 1)
    config = ServerConfig({"tiny": 0.25})
    app = create_app(runtime, [spec], config, forecast=forecast)
    x = np.zeros((1, 16), np.float32).ravel().tolist()
    tensor = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x}
    good = orjson.dumps({"inputs": [tensor]})
    deadline = {"predlat-deadline-ms": "1000"}  # the held ones: roomy
    runtime.hold.set()
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        with ThreadPoolExecutor(3) as pool:
            held = [
                pool.submit(client.post, "/v2/models/tiny/infer", content=good, headers=deadline)
                for _ in range(3)
            ]
            until = time.monotonic() + 5
            while len(runtime.submitted) < 3 and time.monotonic() < until:
                time.sleep(0.005)
            began = time.perf_counter()
            refused = client.post("/v2/models/tiny/infer", content=b"{not json")
            took = time.perf_counter() - began
            runtime.hold.clear()
            answers = [h.result() for h in held]
        metrics = client.get("/metrics").text
    assert refused.status_code == 503, refused.text
    assert refused.json()["reason"] == BELOW_FORECAST
    assert refused.headers["retry-after"] == "1"
    assert "400.0 ms" in refused.json()["error"]
    assert took < 0.2  # nothing waited on: headers in, answer out
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(runtime.submitted) == 3  # the refused one never reached the runtime
    assert 'predlat_refusals_total{model="tiny",reason="deadline_below_forecast"} 1.0' in metrics
    assert app.state.service.door.inflight == 0
    assert "predlat_door_forecast_scale 1.0" in metrics  # not calibrated yet (3 samples)
    assert "predlat_event_loop_lag_seconds" in metrics


def test_loop_lag_is_added_to_the_forecast_unscaled():
    forecast = backlog()
    for _ in range(64):
        forecast.observe(0.01, 0.02)  # answers take twice the forecast
    door = Door(DoorPolicy(max_inflight=0), forecast)
    door.admit("m", 1.0)  # one ahead: the next is scaled
    door.loop_lag.lag.value = 0.005
    refused = door.admit("m", 0.02)
    assert not isinstance(refused, Ticket)  # 2 x 15 ms + 5 ms
    assert "35.0 ms" in refused.message


def test_loop_lag_measures_how_late_timers_fire():
    lag = LoopLag(period_s=0.002)

    async def stall() -> None:
        lag.start(asyncio.get_running_loop())
        for _ in range(80):  # a tick every other pass, each ~4 ms late
            time.sleep(0.006)  # the loop blocked
            await asyncio.sleep(0)
        lag.stop()

    asyncio.run(stall())
    assert len(lag.lag) >= 32 and lag.value > 0.002
