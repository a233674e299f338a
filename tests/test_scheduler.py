"""Scheduler decisions, checked exactly with a fixed forecaster and a synthetic profile."""

from __future__ import annotations

import pytest

from predlat.errors import ConfigError
from predlat.scheduling import (
    Dispatch,
    Finished,
    FixedSlowdownForecaster,
    Priority,
    Reject,
    RejectReason,
    Request,
    Scheduler,
    SchedulerConfig,
    get_policy,
    http_status,
)
from predlat.sim.synthetic import SyntheticModel, synthetic_profile
from predlat.traces.records import BatchRecord

MS = 1e-3
# a: 10 ms + 5 ms per extra row; b: 20 ms + 2 ms per extra row.
PROFILE = synthetic_profile(
    {"a": SyntheticModel(10 * MS, 5 * MS), "b": SyntheticModel(20 * MS, 2 * MS)}
)


def make(
    slots: int = 1,
    slowdown: float = 0.0,
    quantile_factor: float = 1.0,
    policy: str = "predlat",
    **config: float,
) -> tuple[Scheduler, FixedSlowdownForecaster]:
    fc = FixedSlowdownForecaster(PROFILE.solo_latency, slowdown, quantile_factor)
    config.setdefault("max_forecasts", 0)  # these tests count a round's forecasts whole
    sched = Scheduler(["a", "b"], slots, fc, PROFILE, get_policy(policy), SchedulerConfig(**config))  # type: ignore[arg-type]
    return sched, fc


def req(
    rid: int,
    model: str = "a",
    deadline: float = 1.0,
    priority: Priority = Priority.LOW,
    arrival: float = 0.0,
    size: int = 1,
) -> Request:
    return Request(rid, model, arrival, deadline, priority, size)


def finish(sched: Scheduler, d: Dispatch, end: float, ok: bool = True) -> list:
    record = BatchRecord(d.batch_id, d.model, d.batch_size, d.slot, d.decided_at, d.decided_at, end)
    return sched.on_complete(record, end, ok=ok)


def dispatches(decisions: list) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def test_edf_order_within_a_priority() -> None:
    sched, _ = make(max_batch=1)
    (first,) = dispatches(sched.on_arrival(req(0, deadline=5.0), 0.0))
    for rid, deadline in [(1, 0.9), (2, 0.3), (3, 0.6), (4, 0.45)]:
        assert sched.on_arrival(req(rid, deadline=deadline), 0.001) == []
    order, current, t = [], first, 0.01
    while current is not None:
        out = dispatches(finish(sched, current, t))
        current = out[0] if out else None
        if current is not None:
            order.extend(current.request_ids)
        t += 0.01
    assert order == [2, 4, 3, 1]


def test_high_priority_before_low_even_with_a_later_deadline() -> None:
    sched, _ = make(max_batch=1)
    (busy,) = dispatches(sched.on_arrival(req(0), 0.0))
    sched.on_arrival(req(1, deadline=0.2, priority=Priority.LOW), 0.001)
    sched.on_arrival(req(2, deadline=0.5, priority=Priority.HIGH), 0.002)
    (nxt,) = dispatches(finish(sched, busy, 0.01))
    assert nxt.request_ids == (2,)
    (last,) = dispatches(finish(sched, nxt, 0.02))
    assert last.request_ids == (1,)


@pytest.mark.parametrize(("slack_ms", "expected"), [(26, 4), (36, 6), (1000, 8), (12, 1)])
def test_batch_size_is_the_largest_that_meets_the_earliest_deadline(
    slack_ms: float, expected: int
) -> None:
    sched, _ = make()
    (busy,) = dispatches(sched.on_arrival(req(0, deadline=5.0), 0.0))
    t = 0.010
    for rid in range(1, 12):  # 11 queued; the earliest deadline bounds the batch
        sched.on_arrival(req(rid, deadline=t + slack_ms * MS + rid * 1e-6, arrival=0.001), 0.001)
    (batch,) = dispatches(finish(sched, busy, t))
    # a at n rows takes 10 + 5 (n - 1) ms: 4 rows = 25 ms, 6 rows = 35 ms; cap is 8.
    assert batch.batch_size == expected
    assert batch.request_ids == tuple(range(1, expected + 1))
    assert batch.predicted_end == pytest.approx(t + PROFILE.solo_latency("a", expected))


def test_requests_with_several_rows_fill_the_batch_by_rows() -> None:
    sched, _ = make()
    (busy,) = dispatches(sched.on_arrival(req(0, deadline=5.0), 0.0))
    for rid in range(1, 5):
        sched.on_arrival(req(rid, deadline=1.0 + rid * 1e-3, size=3), 0.001)
    (batch,) = dispatches(finish(sched, busy, 0.01))
    assert batch.request_ids == (1, 2) and batch.batch_size == 6


def test_colocation_refused_when_it_would_break_a_running_batch() -> None:
    sched, _ = make(slots=2, slowdown=0.5)
    # a alone: 10 ms, deadline 12 ms. Beside one co-runner it would take 15 ms: too late.
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=0.012), 0.0))
    assert dispatches(sched.on_arrival(req(1, "b", deadline=1.0), 0.001)) == []
    out = finish(sched, a, 0.010)
    assert isinstance(out[0], Finished)
    (b,) = dispatches(out)
    assert b.request_ids == (1,) and b.model == "b"


def test_colocation_allowed_when_everyone_stays_on_time() -> None:
    sched, _ = make(slots=2, slowdown=0.5)
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=0.020), 0.0))
    (b,) = dispatches(sched.on_arrival(req(1, "b", deadline=1.0), 0.001))
    assert {a.slot, b.slot} == {0, 1}


def test_blocked_models_are_not_rechecked_until_something_changes() -> None:
    sched, _ = make(slots=2, slowdown=0.5)
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=0.012), 0.0))
    assert dispatches(sched.on_arrival(req(1, "b", deadline=1.0), 0.001)) == []
    before = sched.stats.forecasts
    # An arrival for a: only a's queue is checked (one forecast, one without the
    # candidate to see whether the running batch was late anyway); b stays blocked.
    assert dispatches(sched.on_arrival(req(2, "a", deadline=1.0), 0.002)) == []
    assert sched.stats.forecasts - before == 2
    assert dispatches(sched.on_tick(0.003)) == []
    assert sched.stats.forecasts - before == 2
    # A completion changes the running set: both are checked again.
    out = dispatches(finish(sched, a, 0.010))
    assert sorted(d.request_ids for d in out) == [(1,), (2,)]


def test_high_priority_work_may_delay_running_low_work_but_not_high_work() -> None:
    sched, _ = make(slots=3, slowdown=0.5)
    # low a (10 ms, deadline 12 ms) runs; a high b beside it would make a 15 ms: allowed.
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=0.012), 0.0))
    (b,) = dispatches(sched.on_arrival(req(1, "b", deadline=1.0, priority=Priority.HIGH), 0.0))
    # b is high with a tight deadline now: another high request may not make it late.
    sched2, _ = make(slots=2, slowdown=0.5)
    (hb,) = dispatches(sched2.on_arrival(req(0, "b", deadline=0.022, priority=Priority.HIGH), 0.0))
    assert (
        dispatches(sched2.on_arrival(req(1, "a", deadline=1.0, priority=Priority.HIGH), 0.0)) == []
    )
    assert (a.request_ids, b.request_ids, hb.request_ids) == ((0,), (1,), (0,))


def test_a_slot_is_kept_for_high_priority_work_while_it_keeps_arriving() -> None:
    sched, _ = make(slots=3, max_batch=1)
    low = [dispatches(sched.on_arrival(req(i, "a"), 0.0)) for i in range(3)]
    assert [len(d) for d in low] == [1, 1, 1]  # no high-priority traffic: every slot
    sched, _ = make(slots=3, max_batch=1)
    # b needs 20 ms of its 25 ms: a high-priority b arriving now could wait 5 ms at most.
    high = req(0, "b", deadline=0.025, priority=Priority.HIGH)
    (h,) = dispatches(sched.on_arrival(high, 0.0))
    low = [dispatches(sched.on_arrival(req(i, "a", deadline=5.0), 0.001)) for i in range(1, 4)]
    assert [len(d) for d in low] == [1, 0, 0]  # one slot stays free for high work
    (h2,) = dispatches(sched.on_arrival(req(4, "b", 0.0225, Priority.HIGH), 0.002))
    assert h2.request_ids == (4,)
    # Two seconds without high-priority arrivals: low work may take the last slot again.
    finish(sched, h, 0.02)
    out = dispatches(sched.on_tick(2.5))
    assert [d.request_ids for d in out] == [(2,)]


def test_the_reserved_slot_is_lent_when_high_priority_work_could_wait_for_a_slot() -> None:
    # b's high-priority requests may wait 80 ms; a runs 10 ms. Keeping the third slot idle
    # buys nothing: a high-priority b arriving now would find a slot within 10 ms.
    sched, _ = make(slots=3, max_batch=1)
    dispatches(sched.on_arrival(req(0, "b", deadline=0.1, priority=Priority.HIGH), 0.0))
    low = [dispatches(sched.on_arrival(req(i, "a", deadline=5.0), 0.001)) for i in range(1, 4)]
    assert [len(d) for d in low] == [1, 1, 0]
    # With nothing running that frees a slot in time, the slot is lent only to a batch
    # that itself ends within the wait: high-priority b may wait 15 ms here, so a (10 ms)
    # gets it and b (20 ms) does not.
    sched, _ = make(slots=2, max_batch=1)
    dispatches(sched.on_arrival(req(0, "b", deadline=0.035, priority=Priority.HIGH), 0.0))
    assert dispatches(sched.on_arrival(req(1, "b", deadline=5.0), 0.0)) == []
    (a,) = dispatches(sched.on_arrival(req(2, "a", deadline=5.0), 0.0))
    assert a.request_ids == (2,)


def test_candidate_that_would_itself_be_late_beside_co_runners_waits() -> None:
    sched, _ = make(slots=2, slowdown=1.0)
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    # b alone 20 ms fits a 30 ms deadline, beside a it takes 40 ms: wait for a to end.
    assert dispatches(sched.on_arrival(req(1, "b", deadline=0.030), 0.0)) == []
    (b,) = dispatches(finish(sched, a, 0.009))
    assert b.request_ids == (1,)


def test_a_running_batch_already_late_does_not_block_the_device() -> None:
    sched, _ = make(slots=2, slowdown=0.5, quantile_factor=2.0)
    # The quantile says a (10 ms, 20 ms at the quantile) misses its 10.1 ms deadline even
    # alone; the idle device runs it anyway.
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=0.0101), 0.0))
    # b beside it makes a later still, but a is late either way: b is not held back.
    (b,) = dispatches(sched.on_arrival(req(1, "b", deadline=1.0), 0.001))
    assert (a.request_ids, b.request_ids) == ((0,), (1,))


def test_last_chance_goes_on_the_mean_when_waiting_cannot_help() -> None:
    sched, _ = make(slots=2, quantile_factor=2.0)
    (b,) = dispatches(sched.on_arrival(req(0, "b", deadline=1.0), 0.0))  # ends at 20 ms
    # a: mean end 10 ms meets 15 ms, the quantile (20 ms) does not; after b ends (20 ms)
    # it could not make it either: it goes now.
    (a,) = dispatches(sched.on_arrival(req(1, "a", deadline=0.015), 0.0))
    assert a.request_ids == (1,)
    # the mean itself misses: it waits (and is rejected once hopeless).
    sched, _ = make(slots=2, slowdown=1.0, quantile_factor=2.0)
    dispatches(sched.on_arrival(req(0, "b", deadline=1.0), 0.0))
    assert dispatches(sched.on_arrival(req(1, "a", deadline=0.015), 0.0)) == []
    del b


def test_last_chance_counts_on_the_same_co_load_after_the_first_end() -> None:
    # Beside a (slowdown 1.5) b's mean end is 30 ms, its quantile 60 ms: a deadline of
    # 58 ms is met on the mean only. a ends at 15 ms; at solo speed from then b would make
    # 58 ms at the quantile (15 + 40), but the slot a frees is soon refilled under load:
    # taken to need as long as now (15 + 60), waiting cannot help, so b goes now.
    sched, _ = make(slots=2, slowdown=0.5, quantile_factor=2.0)
    dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    (b,) = dispatches(sched.on_arrival(req(1, "b", deadline=0.058), 0.0))
    assert b.request_ids == (1,)


def test_early_rejection_with_a_reason() -> None:
    sched, _ = make()
    out = sched.on_arrival(req(0, deadline=0.005), 0.0)
    assert len(out) == 1 and isinstance(out[0], Reject)
    assert "cannot be met" in out[0].reason and "'a' needs 10.00 ms" in out[0].reason


def test_queued_request_rejected_when_it_can_no_longer_make_it() -> None:
    sched, _ = make(max_batch=1)
    (busy,) = dispatches(sched.on_arrival(req(0, deadline=1.0), 0.0))
    assert sched.on_arrival(req(1, deadline=0.030), 0.0) == []
    wake = sched.next_wakeup()
    assert wake == pytest.approx(0.020, abs=1e-5)  # 30 ms deadline - 10 ms alone
    assert sched.on_tick(wake - 0.001) == []
    (rej,) = sched.on_tick(wake)
    assert isinstance(rej, Reject) and "no longer" in rej.reason
    assert sched.next_wakeup() is None
    finish(sched, busy, 0.05)


def test_queue_full_is_rejected() -> None:
    sched, _ = make(max_queue=2, max_batch=1)
    sched.on_arrival(req(0), 0.0)  # dispatched
    sched.on_arrival(req(1), 0.0)
    sched.on_arrival(req(2), 0.0)
    (rej,) = sched.on_arrival(req(3), 0.0)
    assert isinstance(rej, Reject) and rej.reason.startswith("queue full")
    assert rej.kind is RejectReason.QUEUE_FULL and http_status(rej.kind) == 429


def test_rejection_kinds_map_to_status() -> None:
    sched, _ = make(max_batch=1)
    (unknown,) = sched.on_arrival(req(0, model="nope"), 0.0)
    assert unknown.kind is RejectReason.MODEL_NOT_SERVED
    sched.on_arrival(req(1), 0.0)
    sched.on_arrival(req(2), 0.0)
    (shut,) = sched.reject_all()
    assert shut.kind is RejectReason.SHUTTING_DOWN and shut.reason == "shutting down"
    assert {http_status(k) for k in RejectReason if k is not RejectReason.QUEUE_FULL} == {503}
    assert http_status(None) == 503


def test_low_work_stays_out_of_waiting_high_works_way() -> None:
    sched, _ = make(slots=2, slowdown=1.0)
    # a (LOW) runs; a HIGH b request cannot run beside it (40 ms > 35 ms deadline).
    (a,) = dispatches(sched.on_arrival(req(0, "a", deadline=1.0), 0.0))
    assert (
        dispatches(sched.on_arrival(req(1, "b", deadline=0.035, priority=Priority.HIGH), 0.0)) == []
    )
    # A LOW a request would fit in slot 1 on its own terms, but would end after b's
    # latest start (15 ms): it must wait.
    assert dispatches(sched.on_arrival(req(2, "a", deadline=1.0), 0.0)) == []
    out = dispatches(finish(sched, a, 0.010))
    assert [d.request_ids for d in out] == [(1,)]


def test_high_work_may_carry_low_requests_of_the_same_model() -> None:
    sched, _ = make()
    (busy,) = dispatches(sched.on_arrival(req(0, deadline=5.0), 0.0))
    sched.on_arrival(req(1, deadline=0.5, priority=Priority.LOW), 0.001)
    sched.on_arrival(req(2, deadline=0.9, priority=Priority.HIGH), 0.001)
    (batch,) = dispatches(finish(sched, busy, 0.01))
    assert batch.request_ids == (2, 1)


def test_serial_policy_never_colocates() -> None:
    sched, _ = make(slots=4, policy="serial")
    assert len(dispatches(sched.on_arrival(req(0, "a"), 0.0))) == 1
    assert dispatches(sched.on_arrival(req(1, "b"), 0.0)) == []
    assert len(sched.running()) == 1


def test_oblivious_policy_fills_every_slot() -> None:
    sched, _ = make(slots=3, policy="oblivious", max_batch=1)
    out = []
    for rid in range(3):
        out += dispatches(sched.on_arrival(req(rid, "a" if rid % 2 else "b"), 0.0))
    assert sorted(d.slot for d in out) == [0, 1, 2]


def test_idle_device_runs_a_request_a_pessimistic_quantile_would_refuse() -> None:
    sched, _ = make(quantile_factor=3.0)
    (d,) = dispatches(sched.on_arrival(req(0, deadline=0.015), 0.0))
    assert d.request_ids == (0,)


def test_completion_feeds_the_forecaster_with_the_timeline() -> None:
    sched, fc = make(slots=2)
    (a,) = dispatches(sched.on_arrival(req(0, "a"), 0.0))
    (b,) = dispatches(sched.on_arrival(req(1, "b"), 0.002))
    finish(sched, a, 0.010)
    done = finish(sched, b, 0.022)
    sched.learn()  # what the driver does once it has carried out the decisions
    assert [r.batch_id for r in fc.completed] == [a.batch_id, b.batch_id]
    (overlap,) = fc.completed[1].timeline
    assert (overlap.batch_id, overlap.start, overlap.end) == (a.batch_id, 0.002, 0.010)
    assert isinstance(done[0], Finished) and done[0].predicted_latency == pytest.approx(0.020)


def test_learning_comes_after_the_decision_and_is_never_lost() -> None:
    sched, fc = make(slots=2)
    (a,) = dispatches(sched.on_arrival(req(0, "a"), 0.0))
    (b,) = dispatches(sched.on_arrival(req(1, "b"), 0.001))
    finish(sched, a, 0.010)
    assert fc.completed == []  # released, not yet learned from
    assert [r.batch_id for r in fc.running()] == [b.batch_id]
    finish(sched, b, 0.020)  # a driver that never calls learn(): the next round does
    assert [r.batch_id for r in fc.completed] == [a.batch_id]
    sched.on_tick(0.021)
    assert [r.batch_id for r in fc.completed] == [a.batch_id, b.batch_id]


def test_failed_batch_is_finished_not_ok_and_not_learned_from() -> None:
    sched, fc = make()
    (a,) = dispatches(sched.on_arrival(req(0), 0.0))
    (f,) = finish(sched, a, 0.001, ok=False)
    assert isinstance(f, Finished) and not f.ok and f.request_ids == (0,)
    assert fc.running() == [] and fc.completed == []
    assert sched.idle()


def test_reject_all_empties_the_queues() -> None:
    sched, _ = make(max_batch=1)
    sched.on_arrival(req(0), 0.0)
    sched.on_arrival(req(1), 0.0)
    sched.on_arrival(req(2, "b"), 0.0)
    rejects = sched.reject_all()
    assert sorted(r.request_id for r in rejects) == [1, 2]
    assert sched.queued() == 0 and sched.next_wakeup() is None


def test_unknown_model_and_duplicate_ids() -> None:
    sched, _ = make()
    (rej,) = sched.on_arrival(req(0, "zzz"), 0.0)
    assert isinstance(rej, Reject) and "not served" in rej.reason
    sched.on_arrival(req(1), 0.0)
    with pytest.raises(ValueError, match="already pending"):
        sched.on_arrival(req(1), 0.0)


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        get_policy("fastest")
    with pytest.raises(ConfigError, match="max batch"):
        make(max_batch=0)
