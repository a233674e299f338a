"""Planning: which batch a decision round dispatches, if any (see the scheduler's module
doc for the rules). A mixin of `Scheduler`: it reads the scheduler's queues, running set,
forecaster and policy, and changes only its hints and counters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from predlat.predict.forecast import ForecastEnd, RunningBatch
from predlat.scheduling.queues import ModelQueue
from predlat.scheduling.request import Priority, Request


@dataclass
class Plan:
    queue: ModelQueue
    requests: list[Request]
    rows: int
    forecast: ForecastEnd
    ok: bool
    high: bool  # holds at least one high-priority request
    deadline: float  # the earliest deadline among its requests


@dataclass
class Round:
    """Per-decision scratch: the forecast without any candidate, computed at most once."""

    now: float
    baseline: dict[int, ForecastEnd] | None = None
    low_until: float = math.inf  # low-only work must end by then (waiting high work)
    # A held slot is lent on condition (see _low_slots): a refusal may not last, since
    # the reserve lapses with time, so it must not block the model until the next event.
    lent: bool = False


class _OverBudget(Exception):
    """The event has spent its forecasts: the round stops and resumes on a timer."""


class Planner:
    """The planning half of `Scheduler` (attributes are the scheduler's).

    With a forecast budget, a round may stop before any forecast and resume where it
    stopped: nothing has changed meanwhile (any other event starts a new round), so what
    it already computed is kept (`_memo`: forecasts, plans and the hints each model's
    planning started from) and replayed as it came, forecast-free."""

    _memo: dict[tuple, Any]
    # Rounds cut short that another event ended before they resumed, in a row: each
    # doubles the next round's budget, so that one always gets through a model's
    # planning (no simulated clock lets that happen; a real one may, under load).
    _cut_streak = 0

    def _choose(self, now: float) -> Plan | None:
        queues = [q for q in self._queues.values() if len(q)]
        queues.sort(key=_urgency)
        scratch = Round(now)
        low_slots = self._low_slots(scratch)
        for q in queues:
            head = q.head()
            if head is not None and head.priority is Priority.LOW and low_slots <= 0:
                break  # the rest hold only low-priority work: the slots left are reserved
            model, epoch = q.model, self._epoch
            if self._blocked.get(model) != epoch and self._resume_skip.get(model) != epoch:
                try:
                    plan = self._plan(q, scratch)
                except _OverBudget:
                    self._resume_at = now
                    return None
                if plan is not None:
                    self._cut_streak = 0
                    return plan
                if self.config.max_forecasts:
                    self._resume_skip[model] = epoch
                if self._running and not scratch.lent:  # (an idle device never blocks)
                    self._blocked[model] = epoch
            high = q.peek(Priority.HIGH)
            if high is not None:  # high work waits: low-only work must be out of its way
                latest = high.deadline - self.config.margin_s - self._solo(q.model, high.size)
                scratch.low_until = min(scratch.low_until, latest)
        self._cut_streak = 0
        return None

    def _interrupt(self) -> None:
        """An arrival or completion: a round cut short is over (the next starts anew)."""
        if self._resume_at is not None:
            self._resume_at = None
            self._cut_streak = min(self._cut_streak + 1, 16)

    def _solo(self, model: str, rows: int) -> float:
        key = (model, rows)
        value = self._solo_cache.get(key)
        if value is None:
            value = self._solo_cache[key] = self.profile.solo_latency(model, rows)
        return value

    def _check_budget(self) -> None:
        """Before a forecast: stop the round if this event has spent its forecasts (an
        idle device always dispatches, so its round is never cut short)."""
        budget = self.config.max_forecasts << self._cut_streak
        if budget and self._running and self.stats.forecasts - self._round_forecasts >= budget:
            raise _OverBudget

    def _low_slots(self, scratch: Round) -> int:
        """How many more batches of only low-priority work may start now. Held slots
        are lent for as many running batches as are planned to end while a high-priority
        request arriving now could still wait; failing that, one is lent to a batch that
        itself ends by then (`scratch.low_until`)."""
        now = scratch.now
        limit = self.policy.running_limit(self.num_slots)
        free = min(limit, self.num_slots) - len(self._running)
        held = self._reserve.held(now, limit)
        if not held or free <= 0:
            return free - held
        until = self._reserve.wait_limit(now)
        if until <= now:
            return free - held
        ending = len([run for run in self._running.values() if now < run.predicted_end <= until])
        usable = free - max(0, held - ending)
        if usable > 0:
            return usable
        scratch.low_until = min(scratch.low_until, until)
        scratch.lent = True
        return 1

    def _plan(self, q: ModelQueue, scratch: Round) -> Plan | None:
        """The largest feasible batch of `q`'s prefix, or None.

        Feasibility shrinks as the batch grows (later end, more interference), and a
        forecast is the expensive step. So the size to try comes from the model's last
        forecast slowdown (usually right: one forecast); failing that the head alone is
        checked (if it does not fit, nothing of this model does), and then the size its
        forecast slowdown says fits."""
        requests = q.prefix(self.config.max_batch)
        model, now = q.model, scratch.now
        kmax = self._largest_fitting(model, requests, now, 1.0, math.inf)
        if kmax == 0:
            return None
        tried = 0
        hint = self._slowdown_hint.get(model)
        if self.config.max_forecasts:  # resumed, it starts from the hint it first had
            hint = self._memo.setdefault(("hint", model), hint)
        if hint is not None and kmax > 1:
            tried = self._largest_fitting(model, requests[:kmax], now, hint, scratch.low_until)
            if tried > 1:
                plan = self._evaluate(q, requests[:tried], scratch)
                if plan.ok:
                    return plan
        one = self._evaluate(q, requests[:1], scratch)
        if not one.ok:
            # An idle device runs it anyway: no co-runner will leave to make room.
            return one if not self._running else None
        if kmax == 1:
            return one
        k = self._largest_fitting(
            model, requests[:kmax], now, self._slowdown_hint[model], scratch.low_until
        )
        if tried > 1:
            k = min(k, tried - 1)
        if k > 1:
            plan = self._evaluate(q, requests[:k], scratch)
            if plan.ok:
                return plan
        return one

    def _largest_fitting(
        self, model: str, requests: list[Request], now: float, slowdown: float, low_until: float
    ) -> int:
        """How many of `requests` (a prefix) would meet their deadlines if run now and
        slowed by `slowdown` (1: alone); low-only prefixes must also end by `low_until`."""
        rows, deadline, k, high = 0, math.inf, 0, False
        start = now + self.config.margin_s
        solo, top = self._solo, Priority.HIGH
        for request in requests:
            rows += request.size
            if request.deadline < deadline:
                deadline = request.deadline
            high = high or request.priority is top
            end = start + solo(model, rows) * slowdown
            if end > deadline or (not high and end > low_until):
                break
            k += 1
        return k

    def _evaluate(self, q: ModelQueue, requests: list[Request], scratch: Round) -> Plan:
        if not self.config.max_forecasts:
            return self._evaluate_now(q, requests, scratch)
        key = ("plan", q.model, len(requests))
        hit = self._memo.get(key)
        if hit is None:
            plan = self._evaluate_now(q, requests, scratch)
            hit = self._memo[key] = (plan, self._slowdown_hint[q.model])
        self._slowdown_hint[q.model] = hit[1]  # (as the evaluation left it)
        return hit[0]

    def _forecast(
        self, key: tuple, now: float, candidates: tuple[RunningBatch, ...] = ()
    ) -> dict[int, ForecastEnd]:
        """The forecaster's forecast, counted; with a budget, checked against it first
        and kept for a resumed round (which finds it again under `key`)."""
        if self.config.max_forecasts:
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            self._check_budget()
        forecast = self.forecaster.forecast(now, candidates)
        self.stats.forecasts += 1
        if self.config.max_forecasts:
            self._memo[key] = forecast
        return forecast

    def _evaluate_now(self, q: ModelQueue, requests: list[Request], scratch: Round) -> Plan:
        now, margin, policy = scratch.now, self.config.margin_s, self.policy
        rows, deadline, high, top = 0, math.inf, False, Priority.HIGH
        for r in requests:
            rows += r.size
            if r.deadline < deadline:
                deadline = r.deadline
            high = high or r.priority is top
        candidate = RunningBatch(self._next_batch_id, q.model, rows, now)
        forecast = self._forecast(("forecast", q.model, len(requests)), now, (candidate,))
        mine = forecast[candidate.batch_id]
        end = policy.end(mine, high)
        self._slowdown_hint[q.model] = max(1.0, (end - now) / self._solo(q.model, rows))
        ok = end + margin <= deadline
        if not ok and mine.mean + margin <= deadline:
            ok = self._waiting_cannot_help(forecast, candidate, end, deadline, now)
        if ok and not high:
            ok = end <= scratch.low_until
        if ok:
            ok = self._running_stay_on_time(forecast, scratch, high)
        return Plan(q, requests, rows, mine, ok, high, deadline)

    def _waiting_cannot_help(
        self,
        forecast: dict[int, ForecastEnd],
        candidate: RunningBatch,
        end: float,
        deadline: float,
        now: float,
    ) -> bool:
        """The candidate meets its deadline on the mean forecast but not at the planning
        quantile. Waiting is worth it only if, started when the first running batch
        ends, it would make the deadline at the quantile; otherwise this is its best
        chance, and it goes now on the mean rather than expire. Started later it is
        taken to need as long as now: under load a freed slot is soon refilled, so the
        co-load it would meet is about today's (assuming solo speed then kept urgent
        work waiting for a better moment that did not come, measured on the real device
        and in simulation)."""
        first_end = min(
            (f.mean for bid, f in forecast.items() if bid != candidate.batch_id),
            default=now,
        )
        later = first_end + (end - now)
        return later + self.config.margin_s > deadline

    def _running_stay_on_time(
        self, forecast: dict[int, ForecastEnd], scratch: Round, high: bool
    ) -> bool:
        margin, policy = self.config.margin_s, self.policy
        spare_low = high  # high work need only spare running high work ("high first")
        for run in self._running.values():
            if run.late or (spare_low and not run.high):
                continue
            f = forecast.get(run.batch_id)
            if f is None or policy.end(f, run.high) + margin <= run.deadline:
                continue
            if scratch.baseline is None:
                scratch.baseline = self._forecast(("baseline",), scratch.now)
            before = scratch.baseline.get(run.batch_id)
            if before is None or policy.end(before, run.high) + margin <= run.deadline:
                return False  # on time now, late beside the candidate
            run.late = True  # late anyway: no longer held against candidates
        return True


def _urgency(q: ModelQueue) -> tuple[int, float, int]:
    head = q.head()
    assert head is not None
    return (head.priority, head.deadline, head.request_id)
