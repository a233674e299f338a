"""The forecast budget: a round cut short resumes at once on a timer and decides as one
uncut round would (same decisions, same forecasts, same learning order)."""

from __future__ import annotations

import heapq
import random

import pytest
from tests.test_scheduler import dispatches, finish, make, req

from predlat.errors import ConfigError
from predlat.scheduling import (
    Dispatch,
    Priority,
    Reject,
    Request,
    Scheduler,
    SchedulerConfig,
    get_policy,
)
from predlat.sim.synthetic import SyntheticModel, synthetic_profile
from predlat.traces.records import BatchRecord

MS = 1e-3


def test_a_round_over_its_forecast_budget_resumes_at_once_on_a_timer() -> None:
    def setup(budget: int) -> Scheduler:
        sched, _ = make(slots=3, slowdown=1.0, max_forecasts=budget)
        dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
        # b (30 ms deadline) cannot run beside a; a second a can: b is tried first (EDF).
        sched.on_arrival(req(1, "b", deadline=0.030), 0.0, dispatch=False)
        sched.on_arrival(req(2, "a", deadline=1.0), 0.0, dispatch=False)
        return sched

    unlimited = setup(0)
    assert [d.request_ids for d in dispatches(unlimited.on_tick(0.0))] == [(2,)]
    capped = setup(1)
    assert dispatches(capped.on_tick(0.0)) == []  # spent its one forecast on b
    assert capped.next_wakeup() == 0.0  # ... and asks to go on at once
    assert [d.request_ids for d in dispatches(capped.on_tick(0.0))] == [(2,)]
    # With a running beside it now, b must be tried again (as the uncut round does).
    assert capped.next_wakeup() == 0.0
    assert dispatches(capped.on_tick(0.0)) == []
    assert capped.next_wakeup() == pytest.approx(0.030 - 0.020 + 1e-6)  # b's latest start
    assert capped.stats.forecasts == unlimited.stats.forecasts
    assert capped.next_wakeup() == unlimited.next_wakeup()
    with pytest.raises(ConfigError, match="max forecasts"):
        make(max_forecasts=-1)


def test_learning_waits_until_a_round_cut_short_is_over() -> None:
    # The resumed part must decide with the forecaster the first part had, as one
    # uncut round would: what the completion teaches is learned only after it.
    sched, fc = make(slots=3, slowdown=1.0, max_forecasts=1)
    dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    (second,) = dispatches(sched.on_arrival(req(1, "a", deadline=1.0), 0.0))
    sched.on_arrival(req(2, "b", deadline=0.030), 0.0, dispatch=False)
    sched.on_arrival(req(3, "a", deadline=1.0), 0.0, dispatch=False)
    assert dispatches(finish(sched, second, 0.005)) == []  # cut short after b
    ticks = 0
    while sched.next_wakeup() == 0.005:
        sched.learn()
        assert fc.completed == []
        sched.on_tick(0.005)
        ticks += 1
    sched.learn()
    assert ticks >= 1 and [r.batch_id for r in fc.completed] == [second.batch_id]
    # An arrival ends a cut round: the next tick starts a new one, which learns first.
    sched, fc = make(slots=3, slowdown=1.0, max_forecasts=1)
    dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    (second,) = dispatches(sched.on_arrival(req(1, "a", deadline=1.0), 0.0))
    sched.on_arrival(req(2, "b", deadline=0.030), 0.0, dispatch=False)
    sched.on_arrival(req(3, "a", deadline=1.0), 0.0, dispatch=False)
    finish(sched, second, 0.005)
    sched.on_arrival(req(4, "b", deadline=0.5), 0.006, dispatch=False)
    sched.on_tick(0.006)
    assert [r.batch_id for r in fc.completed] == [second.batch_id]


def _drive(budget: int, seed: int) -> tuple[list[tuple[float, object]], int]:
    """A seeded overload through a scheduler with the real forecaster (fine-rls, learning
    online), ticked at once whenever it asks: every dispatch and rejection with its time,
    and the forecasts spent."""
    models = {f"m{i}": SyntheticModel((2 + 3 * i) * MS, (1 + i) * MS) for i in range(4)}
    profile = synthetic_profile(models)
    policy = get_policy("predlat")
    config = SchedulerConfig(max_forecasts=budget, max_queue=60)
    sched = Scheduler(list(models), 3, policy.make_forecaster(profile), profile, policy, config)
    rng = random.Random(seed)
    events: list[tuple[float, int, object]] = []
    t = 0.0
    for rid in range(400):
        t += rng.expovariate(900.0)
        deadline = t + rng.uniform(5, 60) * MS
        high = Priority.HIGH if rng.random() < 0.3 else Priority.LOW
        events.append((t, 1, Request(rid, rng.choice(list(models)), t, deadline, high)))
    heapq.heapify(events)
    out: list[tuple[float, object]] = []
    order = 2
    while events:
        now, _, item = heapq.heappop(events)
        if isinstance(item, Request):
            decisions = sched.on_arrival(item, now)
        elif isinstance(item, Dispatch):
            d = item
            rec = BatchRecord(
                d.batch_id, d.model, d.batch_size, d.slot, d.decided_at, d.decided_at, now
            )
            decisions = sched.on_complete(rec, now)
        else:
            decisions = sched.on_tick(now) if sched.next_wakeup() == item else []
        sched.learn()
        while sched.next_wakeup() is not None and sched.next_wakeup() <= now:
            decisions += sched.on_tick(now)  # a round cut short resumes at once
            sched.learn()
        for d in decisions:
            if isinstance(d, Dispatch):
                out.append((now, (d.batch_id, d.model, d.request_ids)))
                order += 1
                end = d.predicted_mean_end * (1.0 + 0.3 * (d.batch_id % 3))
                heapq.heappush(events, (max(end, now + 1e-6), order, d))
            elif isinstance(d, Reject):
                out.append((now, d.request_id))
        wake = sched.next_wakeup()
        if wake is not None:
            order += 1
            heapq.heappush(events, (wake, order, wake))
    return out, sched.stats.forecasts


@pytest.mark.parametrize("seed", [1, 2])
def test_a_budget_changes_when_forecasts_are_made_not_what_is_decided(seed: int) -> None:
    uncut, spent = _drive(0, seed)
    assert len(uncut) > 300 and any(isinstance(d, tuple) for _, d in uncut)
    for budget in (1, 2):
        assert _drive(budget, seed) == (uncut, spent)


def test_a_round_cut_short_and_ended_by_another_event_lets_the_next_spend_more() -> None:
    # On a real clock another event may come before the resuming timer, and a new
    # round starts over: each time, the budget doubles, so planning always gets through.
    sched, _ = make(slots=3, slowdown=1.0, max_forecasts=1)
    dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    sched.on_arrival(req(1, "b", deadline=0.030), 0.0, dispatch=False)
    sched.on_arrival(req(2, "a", deadline=1.0), 0.0, dispatch=False)
    assert dispatches(sched.on_tick(0.0)) == [] and sched.next_wakeup() == 0.0
    spent = sched.stats.forecasts
    out = sched.on_arrival(req(3, "b", deadline=0.5), 0.001)  # before the timer
    assert sched.stats.forecasts - spent == 2
    assert [d.request_ids for d in dispatches(out)] == [(2,)]
