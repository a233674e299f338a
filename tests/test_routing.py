"""The shared routing rule: rank devices by forecast completion, deadline-meeting first,
refuse with a reason when none can (no Ray involved)."""

from __future__ import annotations

import pytest

from predlat.errors import ConfigError
from predlat.scheduling.request import Priority
from predlat.scheduling.routing import (
    DeviceForecast,
    RouteRequest,
    aged,
    completion_s,
    lower_bound_s,
    place,
    rank,
    solo_latency,
)

HEAVY = {1: 0.010, 2: 0.016, 4: 0.028, 8: 0.050}
LIGHT = {1: 0.001, 2: 0.0015, 4: 0.0025, 8: 0.0045}


def device(name: str, **kw) -> DeviceForecast:
    return DeviceForecast(
        name=name, slots=kw.pop("slots", 1), solo_s={"heavy": HEAVY, "light": LIGHT}, **kw
    )


def req(model: str = "light", deadline: float = 0.02, prio=Priority.LOW, rows: int = 1):
    return RouteRequest(model, rows, prio, deadline)


def test_solo_latency_interpolates_and_extrapolates() -> None:
    assert solo_latency(HEAVY, 4) == 0.028
    assert solo_latency(HEAVY, 3) == pytest.approx(0.022)
    assert solo_latency(HEAVY, 16) == pytest.approx(0.050 + 8 * (0.050 - 0.028) / 4)
    assert solo_latency({4: 0.01}, 2) == 0.01  # below the smallest: the smallest
    assert solo_latency({4: 0.01}, 8) == pytest.approx(0.02)  # one point: proportional


def test_idle_device_finishes_in_its_service_time() -> None:
    assert completion_s(device("a"), req()) == pytest.approx(0.001)
    slow = device("a", slowdown={"heavy": 2.0})
    assert completion_s(slow, req("heavy")) == pytest.approx(0.020)


def test_prefers_the_device_that_finishes_first() -> None:
    busy = device("a", running_s=0.03, running_batches=1)
    idle = device("b")
    decision = rank([busy, idle], req(deadline=1.0))
    assert [c.name for c in decision.ranked] == ["b", "a"]
    assert decision.refusal is None


def test_only_deadline_meeting_devices_are_offered() -> None:
    busy = device("a", running_s=0.05, running_batches=1)
    idle = device("b")
    decision = rank([busy, idle], req(deadline=0.01))
    assert [c.name for c in decision.ranked] == ["b"]


def test_high_priority_waits_only_for_high_work() -> None:
    # Lots of queued low work: a low request waits for it, a high one does not.
    loaded = device("a", running_s=0.002, running_batches=1, backlog_s={"heavy": 0.2}, queued=8)
    low = completion_s(loaded, req(prio=Priority.LOW))
    high = completion_s(loaded, req(prio=Priority.HIGH))
    assert low == pytest.approx(0.202 + 0.001)
    assert high == pytest.approx(0.002 + 0.001)


def test_free_slots_mean_no_wait_and_full_slots_share_the_work() -> None:
    two = device("a", slots=2, running_s=0.01, running_batches=1)
    assert completion_s(two, req()) == pytest.approx(0.001)
    full = device("a", slots=2, running_s=0.02, running_batches=2)
    assert completion_s(full, req()) == pytest.approx(0.010 + 0.001)


def test_ties_break_by_name_deterministically() -> None:
    decision = rank([device("z"), device("m"), device("a")], req(deadline=1.0))
    assert [c.name for c in decision.ranked] == ["a", "m", "z"]


def test_refuses_with_a_reason_when_no_device_can_meet_the_deadline() -> None:
    busy = [device(n, running_s=0.1, running_batches=1) for n in "ab"]
    decision = rank(busy, req("heavy", deadline=0.05))
    assert decision.ranked == ()
    assert decision.refusal is not None
    assert "50.0 ms deadline" in decision.refusal and "heavy" in decision.refusal


def test_refuses_unknown_models_and_skips_unhealthy_devices() -> None:
    assert "no device serves model 'nope'" in rank([device("a")], req("nope")).refusal
    sick = DeviceForecast("a", 1, {"light": LIGHT}, healthy=False)
    assert "no healthy device" in rank([sick], req()).refusal
    ok = rank([sick, device("b")], req(deadline=1.0))
    assert [c.name for c in ok.ranked] == ["b"]


def test_bad_requests_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="at least one row"):
        rank([device("a")], req(rows=0))
    with pytest.raises(ConfigError, match="finite"):
        rank([device("a")], req(deadline=float("inf")))


def test_a_passed_deadline_is_refused_as_such() -> None:
    assert "already passed" in rank([device("a")], req(deadline=-0.001)).refusal


def test_aging_drains_running_work_then_high_then_low() -> None:
    d = device(
        "a",
        slots=1,
        running_s=0.004,
        running_batches=1,
        backlog_s={"heavy": 0.010, "light": 0.002},
        high_backlog_s=0.002,
        queued=4,
        high_queued=1,
    )
    assert aged(d, 0.0) is d
    a = aged(d, 0.005)  # 4 ms of running work, then 1 ms of the high backlog
    assert a.running_s == 0.0 and a.running_batches == 0
    assert a.high_backlog_s == pytest.approx(0.001)
    assert sum(a.backlog_s.values()) == pytest.approx(0.011)
    gone = aged(d, 1.0)
    assert gone.backlog_s == {} and gone.queued == 0 and gone.high_queued == 0
    assert completion_s(gone, req()) == pytest.approx(0.001)


def test_place_offers_late_devices_last_and_refuses_only_below_the_lower_bound() -> None:
    # Queued low work makes both look late, but the scheduler may run a tight request
    # before later-deadline work: the devices decide, soonest first.
    queued = {"heavy": 0.2}
    a = device("a", running_s=0.002, running_batches=1, backlog_s=queued, queued=8)
    b = device("b", running_s=0.001, running_batches=1, backlog_s=queued, queued=8)
    assert rank([a, b], req(deadline=0.01)).refusal is not None
    decision = place([a, b], req(deadline=0.01))
    assert decision.refusal is None
    assert [(c.name, c.meets) for c in decision.ranked] == [("b", False), ("a", False)]
    assert lower_bound_s(b, req()) == pytest.approx(0.002)
    # Running batches cannot be preempted: past them, no device can make it.
    stuck = [device(n, running_s=0.05, running_batches=1) for n in "ab"]
    refused = place(stuck, req(deadline=0.01))
    assert refused.ranked == () and "10.0 ms deadline" in refused.refusal
    assert "already passed" in place([a], req(deadline=0.0)).refusal
