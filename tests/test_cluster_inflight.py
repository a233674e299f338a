"""The router's ledger of requests in flight, read as a replica's state (no Ray)."""

from __future__ import annotations

import pytest

from predlat.cluster.inflight import InFlight, Sent
from predlat.scheduling.request import Priority
from predlat.scheduling.routing import DeviceForecast, RouteRequest, completion_s

HEAVY = {1: 0.010, 2: 0.016, 4: 0.028}
LIGHT = {1: 0.001, 2: 0.0015, 4: 0.0025}


def idle(slots: int = 1, **kw) -> DeviceForecast:
    return DeviceForecast("r", slots, {"heavy": HEAVY, "light": LIGHT}, **kw)


def test_an_empty_ledger_leaves_the_published_state_alone() -> None:
    device = idle(running_s=0.003, running_batches=1)
    assert InFlight().forecast(device, max_batch=4, now=5.0) is device


def test_the_oldest_request_runs_and_later_ones_queue() -> None:
    ledger = InFlight()
    ledger.add("a", Sent("heavy", 1, Priority.LOW, at=1.000))
    ledger.add("b", Sent("light", 2, Priority.HIGH, at=1.004))
    ledger.add("c", Sent("heavy", 1, Priority.LOW, at=1.005))
    f = ledger.forecast(idle(), max_batch=4, now=1.006)
    assert f.running_batches == 1
    assert f.running_s == pytest.approx(0.010 - 0.006)  # heavy at 1 row, 6 ms into it
    assert f.backlog_s["light"] == pytest.approx(0.0015)
    assert f.backlog_s["heavy"] == pytest.approx(0.010)
    assert (f.queued, f.high_queued) == (3, 2)
    assert f.high_backlog_s == pytest.approx(0.0015)
    # A high-priority request waits for the running batch and high work only.
    hp = completion_s(f, RouteRequest("light", 1, Priority.HIGH, 1.0))
    assert hp == pytest.approx(0.004 + 0.0015 + 0.001)


def test_an_answer_starts_the_next_batch_with_what_was_waiting() -> None:
    ledger = InFlight()
    ledger.add("a", Sent("heavy", 1, Priority.LOW, at=1.000))
    ledger.add("b", Sent("light", 1, Priority.LOW, at=1.002))
    ledger.add("c", Sent("heavy", 1, Priority.HIGH, at=1.003))
    assert ledger.done("a", now=1.010) is not None
    assert ledger.done("a", now=1.011) is None  # answered once
    f = ledger.forecast(idle(), max_batch=4, now=1.012)
    # The high-priority heavy request goes first, started when 'a' came back.
    assert f.running_batches == 1
    assert f.running_s == pytest.approx(0.010 - 0.002)
    assert f.backlog_s == {"light": pytest.approx(0.001)}
    assert f.high_queued == 0


def test_batches_are_capped_and_work_runs_late_to_zero_not_below() -> None:
    ledger = InFlight()
    for i in range(6):
        ledger.add(str(i), Sent("light", 1, Priority.LOW, at=2.0))
    f = ledger.forecast(idle(), max_batch=4, now=3.0)  # long overdue
    assert f.running_s == 0.0 and f.running_batches == 1
    assert f.backlog_s["light"] == pytest.approx(0.0015)  # the 2 rows past the cap
    assert f.queued == 2


def test_the_busier_of_ledger_and_published_state_wins() -> None:
    ledger = InFlight()
    ledger.add("a", Sent("light", 1, Priority.LOW, at=1.0))
    published = idle(backlog_s={"heavy": 0.05}, queued=3, high_backlog_s=0.01, high_queued=1)
    f = ledger.forecast(published, max_batch=4, now=1.0)
    assert f.backlog_s["heavy"] == pytest.approx(0.05)  # another router's work
    assert f.running_s == pytest.approx(0.001) and f.running_batches == 1
    assert (f.queued, f.high_queued) == (3, 1)


def test_slowdown_stretches_the_ledgers_work() -> None:
    ledger = InFlight()
    ledger.add("a", Sent("heavy", 1, Priority.LOW, at=1.0))
    f = ledger.forecast(idle(slowdown={"heavy": 2.0}), max_batch=4, now=1.0)
    assert f.running_s == pytest.approx(0.020)
