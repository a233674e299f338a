"""The scheduler: pure decision logic for one device.

Events in (a request arrived, a batch finished, a timer fired, each at a time `now`),
decisions out (`Dispatch`, `Reject`, `Finished`). It owns no thread, socket or clock,
so the runtime (wall clock), the simulator (virtual clock) and tests drive the very same
object.

On every event it rejects queued requests that can no longer meet their deadline even
alone, then fills free slots. For each model, most urgent first (high priority before
low, earliest deadline first), it looks for the largest batch of that model's queued
requests (a prefix in dispatch order, at most `max_batch` rows) that the forecaster
(at the policy's quantile) says

- ends before the earliest deadline in it,
- leaves every running batch on time (a batch already forecast late is not held
  against the candidate: it would block the device for nothing; a high-priority
  candidate need only spare running high-priority batches), and
- if it holds only low-priority work: ends before the latest start of any waiting
  high-priority request, and leaves `high_reserve` slots free while high-priority
  requests keep arriving (there is no preemption: a slot must be there when one comes),
  unless a high-priority request arriving now could wait for a slot to free
  (`predlat.scheduling.reserve`).

Failing that it tries a smaller batch, then the next model; if nothing fits it waits for
the next event. Two exceptions to waiting, where waiting cannot help: an idle device
runs the most urgent request that can still make it alone, and a candidate that meets
its deadline on the mean forecast (not at the quantile) goes now if it could not make
it at the quantile started when the first running batch ends.

Every finished batch is learned from, but after the decisions its completion triggers
(`learn`, called by the driver once they are carried out): a completion frees a slot,
and refilling it should not wait for a predictor update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from predlat.errors import ConfigError
from predlat.predict.forecast import ForecastEnd, RunningBatch
from predlat.profiling.profile import Profile
from predlat.scheduling.forecasting import ForecasterLike
from predlat.scheduling.policies import Policy
from predlat.scheduling.queues import ModelQueue
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Decision, Dispatch, Finished, Priority, Reject, Request
from predlat.scheduling.reserve import HighReserve
from predlat.scheduling.timeline import TimelineTracker
from predlat.traces.records import BatchRecord

# Timers fire this long after the instant a request stops being feasible, so that the
# check at wake-up sees it as infeasible despite rounding.
_WAKE_EPSILON = 1e-6
_PRIORITIES = tuple(Priority)  # iterating the enum itself is slow on the hot path


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8  # rows per batch (a single larger request still runs, alone)
    max_queue: int = 1000  # queued requests over all models
    margin_s: float = 0.0  # reserve taken off every deadline (dispatch lag, hand-offs)
    # Slots low-priority-only batches leave free while high-priority requests keep
    # arriving (one arrived within `high_window_s`): a high-priority request then finds a
    # slot at once instead of queueing behind long low-priority batches (no preemption).
    high_reserve: int = 1
    high_window_s: float = 1.0
    # A high-priority candidate need only keep running high-priority batches on time; it
    # may push running low-priority batches past their deadlines ("high first").
    high_may_delay_low: bool = True
    # Forecasts one event may spend on models found infeasible before it yields: the
    # rest are checked at once on a timer (`next_wakeup` asks for it at the same
    # instant), so no single event holds the scheduler long. 0: no limit.
    max_forecasts: int = 0

    def validate(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max batch must be at least 1, got {self.max_batch}")
        if self.max_queue < 1:
            raise ConfigError(f"max queue must be at least 1, got {self.max_queue}")
        if self.margin_s < 0:
            raise ConfigError(f"deadline margin must be non-negative, got {self.margin_s}")
        if self.max_forecasts < 0:
            raise ConfigError(f"max forecasts must be non-negative, got {self.max_forecasts}")
        if self.high_reserve < 0:
            raise ConfigError(f"high reserve must be non-negative, got {self.high_reserve}")


@dataclass
class SchedulerStats:
    arrivals: int = 0
    dispatched: int = 0  # batches
    finished: int = 0  # batches
    rejected: int = 0  # requests
    forecasts: int = 0  # forecaster calls (the main cost of a decision)


@dataclass
class RunningInfo:
    """A batch the scheduler dispatched and has not yet seen finish."""

    batch_id: int
    slot: int
    model: str
    batch_size: int
    requests: tuple[Request, ...]
    deadline: float  # the earliest deadline among its requests
    start: float  # dispatch time
    predicted_end: float
    predicted_mean_end: float
    high: bool  # holds at least one high-priority request
    late: bool = False  # forecast to miss its deadline whatever is added beside it


@dataclass
class _Plan:
    queue: ModelQueue
    requests: list[Request]
    rows: int
    forecast: ForecastEnd
    ok: bool
    high: bool  # holds at least one high-priority request
    deadline: float  # the earliest deadline among its requests


@dataclass
class _Round:
    """Per-decision scratch: the forecast without any candidate, computed at most once."""

    now: float
    baseline: dict[int, ForecastEnd] | None = None
    low_until: float = math.inf  # low-only work must end by then (waiting high work)
    # A held slot is lent on condition (see _low_slots): a refusal may not last, since
    # the reserve lapses with time, so it must not block the model until the next event.
    lent: bool = False


class Scheduler:
    def __init__(
        self,
        models: Sequence[str],
        num_slots: int,
        forecaster: ForecasterLike,
        profile: Profile,
        policy: Policy,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.config.validate()
        if num_slots < 1:
            raise ConfigError(f"slots must be at least 1, got {num_slots}")
        if not models:
            raise ConfigError("a scheduler needs at least one model")
        self.num_slots = num_slots
        self.forecaster = forecaster
        self.profile = profile
        self.policy = policy
        self.stats = SchedulerStats()
        self._queues = {m: ModelQueue(m) for m in models}
        self._solo_cache: dict[tuple[str, int], float] = {}
        # Each model's last forecast slowdown (policy end / solo): the first batch size
        # to try, which saves forecasts.
        self._slowdown_hint: dict[str, float] = {}
        # Models found with no feasible batch, and the epoch (count of dispatches and
        # completions) when that was found. Until the running set or the model's queue
        # changes, nothing can have become feasible (time only makes deadlines nearer),
        # so arrivals of other models do not pay for re-checking them.
        self._blocked: dict[str, int] = {}
        self._epoch = 0
        self._reserve = HighReserve(self.config.high_reserve, self.config.high_window_s)
        # The earliest moment a queue head stops being feasible alone (None: to be
        # recomputed). It changes only when a head does, so arrivals behind the heads and
        # events that change no queue reuse it (next_wakeup, and _expire's quick exit).
        self._latest_start: float | None = None
        # A decision round that stopped at its forecast budget: when it did (a timer then
        # resumes it), and the forecast count its event started from.
        self._resume_at: float | None = None
        self._round_forecasts = 0
        self._resume_skip: set[str] = set()  # models a resumed round need not try again
        for m in models:
            self._solo(m, 1)  # fail now, not mid-run, if the profile lacks a model
        self._queued = 0
        self._free: list[int] = list(range(num_slots))
        self._running: dict[int, RunningInfo] = {}
        self._seen: set[int] = set()
        self._next_batch_id = 0
        self._timeline = TimelineTracker()
        # Finished batches (with their forecast latency) not yet learned from, and how
        # many of them an earlier decision round already left.
        self._to_learn: list[tuple[BatchRecord, float | None]] = []
        self._stale = 0

    # -- events ------------------------------------------------------------------------
    def on_arrival(self, request: Request, now: float, dispatch: bool = True) -> list[Decision]:
        """A request arrived: queue it or reject it at once, then fill free slots (unless
        `dispatch` is False: a driver with several events at hand decides once, after
        the last, with `on_tick`)."""
        if request.request_id in self._seen:
            raise ValueError(f"request id {request.request_id} is already pending")
        self._seen.add(request.request_id)
        self.stats.arrivals += 1
        if request.priority is Priority.HIGH:
            self._high_arrived(request, now)
        out: list[Decision] = []
        refusal = self._admission_refusal(request, now)
        if refusal is not None:
            self._reject(request, *refusal, out)
        else:
            q = self._queues[request.model]
            q.push(request)
            if q.peek(request.priority) is request:
                self._latest_start = None  # a new head
            self._blocked.pop(request.model, None)
            self._queued += 1
        if dispatch:
            self._schedule(now, out)
        return out

    def on_complete(
        self, record: BatchRecord, now: float, ok: bool = True, dispatch: bool = True
    ) -> list[Decision]:
        """A batch this scheduler dispatched finished (`ok` False: the engine failed).
        The first decision is its `Finished`, with the record's timeline attached; then
        free slots are filled (unless `dispatch` is False, as for `on_arrival`)."""
        run = self._running.pop(record.batch_id, None)
        if run is None:
            raise ValueError(f"batch {record.batch_id} is not running on this scheduler")
        self._release(run.slot)
        self._epoch += 1
        full = self._timeline.finished(record)
        predicted = self.forecaster.release(full)
        # What it teaches is learned after this event's decisions (see `learn`); a failed
        # batch's (meaningless) latency teaches nothing.
        if ok:
            self._to_learn.append((full, predicted))
        self.stats.finished += 1
        for r in run.requests:
            self._seen.discard(r.request_id)
        out: list[Decision] = [
            Finished(
                full,
                tuple(r.request_id for r in run.requests),
                run.predicted_mean_end - run.start,
                ok,
            )
        ]
        if dispatch:
            self._schedule(now, out)
        return out

    def on_tick(self, now: float) -> list[Decision]:
        """A timer asked for by `next_wakeup` fired (early or late calls are harmless)."""
        out: list[Decision] = []
        resume = self._resume_at is not None and now >= self._resume_at
        self._schedule(now, out, resume)
        return out

    def learn(self) -> None:
        """Teach the forecaster what the batches finished so far taught (predictor,
        calibration). Learning is off the decision path: `on_complete` decides with the
        batch released but not yet learned from, and the driver calls this once it has
        carried out the decisions. A driver that never calls it loses nothing: the next
        decision round first learns whatever an earlier round left."""
        self._learn_first(len(self._to_learn))

    def _learn_first(self, n: int) -> None:
        pending = self._to_learn[:n]
        del self._to_learn[:n]
        self._stale = max(0, self._stale - n)
        learn = self.forecaster.learn
        for record, predicted in pending:
            learn(record, predicted)

    def next_wakeup(self) -> float | None:
        """When the scheduler wants `on_tick`: the moment the most urgent queued request
        stops being feasible even alone (to reject it then, not at its deadline), or at
        once if the last decision round stopped at its forecast budget."""
        if not self._queued:
            return None
        wake = self._earliest_latest_start()
        if self._resume_at is not None and self._resume_at < wake:
            return self._resume_at
        return None if wake == math.inf else wake + _WAKE_EPSILON

    def _earliest_latest_start(self) -> float:
        wake = self._latest_start
        if wake is not None:
            return wake
        wake = math.inf
        margin = self.config.margin_s
        for q in self._queues.values():
            if not len(q):
                continue
            for head in q.heads():
                latest = head.deadline - margin - self._solo(head.model, head.size)
                wake = min(wake, latest)
        self._latest_start = wake
        return wake

    def reject_all(
        self, kind: RejectReason = RejectReason.SHUTTING_DOWN, detail: str = ""
    ) -> list[Reject]:
        """Reject every queued request (shutdown); running batches are left to finish."""
        out: list[Decision] = []
        for q in self._queues.values():
            for request in q.pop_all():
                self._reject(request, kind, detail, out)
        self._queued = 0
        self._latest_start = None
        return [d for d in out if isinstance(d, Reject)]

    # -- state for metrics ---------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._queues)

    def queued(self) -> int:
        return self._queued

    def queue_lengths(self) -> dict[str, int]:
        return {m: len(q) for m, q in self._queues.items()}

    def running(self) -> list[RunningInfo]:
        return list(self._running.values())

    def idle(self) -> bool:
        return not self._running and not self._queued

    def _high_arrived(self, request: Request, now: float) -> None:
        if request.model in self._queues and request.size >= 1:
            need = self._solo(request.model, request.size)
            slack = request.deadline - now - self.config.margin_s - need
            self._reserve.arrived(request.model, now, slack)
        else:  # refused at admission; it still says high-priority work is coming
            self._reserve.seen(now)

    # -- admission -----------------------------------------------------------------------
    def _admission_refusal(
        self, request: Request, now: float
    ) -> tuple[RejectReason, str] | None:
        if request.model not in self._queues:
            return RejectReason.MODEL_NOT_SERVED, f"'{request.model}' is not served here"
        if request.size < 1:
            return RejectReason.BAD_SIZE, f"needs at least one row, got {request.size}"
        if self._queued >= self.config.max_queue:
            return RejectReason.QUEUE_FULL, f"{self._queued} requests queued"
        need = self._solo(request.model, request.size)
        left = request.deadline - now - self.config.margin_s
        if need > left:
            return RejectReason.DEADLINE, (
                f"{left * 1e3:.2f} ms left, '{request.model}' needs "
                f"{need * 1e3:.2f} ms alone at batch {request.size}"
            )
        return None

    def _expire(self, now: float, out: list[Decision]) -> None:
        if not self._queued:
            return
        # Quick exit: every head is feasible well before its latest start (the slack
        # keeps rounding from ever deciding differently from the full check below).
        # Without it at hand, the full check costs no more than finding it would.
        latest = self._latest_start
        if latest is not None and now < latest - 1e-9 * (1.0 + abs(now)):
            return
        margin = self.config.margin_s
        wake = math.inf  # the earliest latest start of the heads left (as next_wakeup)
        for q in self._queues.values():
            if not len(q):
                continue
            for priority in _PRIORITIES:
                head = q.peek(priority)
                while head is not None:
                    need = self._solo(head.model, head.size)
                    if now + margin + need <= head.deadline:
                        latest = head.deadline - margin - need
                        if latest < wake:
                            wake = latest
                        break
                    q.pop_head(priority)
                    self._blocked.pop(q.model, None)
                    self._queued -= 1
                    left = head.deadline - now
                    self._reject(
                        head,
                        RejectReason.EXPIRED,
                        f"waited {(now - head.arrival) * 1e3:.2f} ms,"
                        f" {left * 1e3:.2f} ms left, needs {need * 1e3:.2f} ms alone",
                        out,
                    )
                    head = q.peek(priority)
        self._latest_start = wake

    def _reject(
        self, request: Request, kind: RejectReason, detail: str, out: list[Decision]
    ) -> None:
        self._seen.discard(request.request_id)
        self.stats.rejected += 1
        reason = f"{kind.value}: {detail}" if detail else kind.value
        out.append(Reject(request.request_id, reason, kind))

    # -- dispatching ---------------------------------------------------------------------
    def _schedule(self, now: float, out: list[Decision], resume: bool = False) -> None:
        if self._stale:  # completions an earlier round left unlearned
            self._learn_first(self._stale)
        self._stale = len(self._to_learn)  # this round's, once it has decided
        self._resume_at = None
        self._round_forecasts = self.stats.forecasts
        if not resume:  # an arrival or completion: every model may have changed
            self._resume_skip.clear()
        self._expire(now, out)
        limit = self.policy.running_limit(self.num_slots)
        while self._free and len(self._running) < limit and self._queued:
            plan = self._choose(now)
            if plan is None:
                return
            out.append(self._dispatch(plan, now))

    def _choose(self, now: float) -> _Plan | None:
        queues = [q for q in self._queues.values() if len(q)]
        queues.sort(key=_urgency)
        scratch = _Round(now)
        low_slots = self._low_slots(scratch)
        for q in queues:
            head = q.head()
            if head is not None and head.priority is Priority.LOW and low_slots <= 0:
                break  # the rest hold only low-priority work: the slots left are reserved
            if self._blocked.get(q.model) != self._epoch and q.model not in self._resume_skip:
                if self._over_budget():
                    self._resume_at = now
                    return None
                plan = self._plan(q, scratch)
                if plan is not None:
                    return plan
                if self.config.max_forecasts:
                    self._resume_skip.add(q.model)
                if self._running and not scratch.lent:  # (an idle device never blocks)
                    self._blocked[q.model] = self._epoch
            high = q.peek(Priority.HIGH)
            if high is not None:  # high work waits: low-only work must be out of its way
                latest = high.deadline - self.config.margin_s - self._solo(q.model, high.size)
                scratch.low_until = min(scratch.low_until, latest)
        return None

    def _over_budget(self) -> bool:
        """This event has spent its forecasts (an idle device always dispatches, so its
        round is never cut short). The models it found infeasible are skipped by the
        rounds that resume it, until an arrival or completion changes the state."""
        budget = self.config.max_forecasts
        if not budget or not self._running:
            return False
        return self.stats.forecasts - self._round_forecasts >= budget

    def _low_slots(self, scratch: _Round) -> int:
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
        ending = sum(1 for run in self._running.values() if now < run.predicted_end <= until)
        usable = free - max(0, held - ending)
        if usable > 0:
            return usable
        scratch.low_until = min(scratch.low_until, until)
        scratch.lent = True
        return 1

    def _plan(self, q: ModelQueue, scratch: _Round) -> _Plan | None:
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

    def _evaluate(self, q: ModelQueue, requests: list[Request], scratch: _Round) -> _Plan:
        now, margin, policy = scratch.now, self.config.margin_s, self.policy
        rows, deadline, high, top = 0, math.inf, False, Priority.HIGH
        for r in requests:
            rows += r.size
            if r.deadline < deadline:
                deadline = r.deadline
            high = high or r.priority is top
        candidate = RunningBatch(self._next_batch_id, q.model, rows, now)
        forecast = self.forecaster.forecast(now, (candidate,))
        self.stats.forecasts += 1
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
        return _Plan(q, requests, rows, mine, ok, high, deadline)

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
        self, forecast: dict[int, ForecastEnd], scratch: _Round, high: bool
    ) -> bool:
        margin, policy = self.config.margin_s, self.policy
        spare_low = high and self.config.high_may_delay_low
        for run in self._running.values():
            if run.late or (spare_low and not run.high):
                continue
            f = forecast.get(run.batch_id)
            if f is None or policy.end(f, run.high) + margin <= run.deadline:
                continue
            if scratch.baseline is None:
                scratch.baseline = self.forecaster.forecast(scratch.now)
                self.stats.forecasts += 1
            before = scratch.baseline.get(run.batch_id)
            if before is None or policy.end(before, run.high) + margin <= run.deadline:
                return False  # on time now, late beside the candidate
            run.late = True  # late anyway: no longer held against candidates
        return True

    def _dispatch(self, plan: _Plan, now: float) -> Dispatch:
        slot = self._free.pop(0)
        plan.queue.remove_prefix(plan.requests)
        self._latest_start = None
        self._epoch += 1
        self._queued -= len(plan.requests)
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        model = plan.queue.model
        self.forecaster.on_dispatch(
            RunningBatch(batch_id, model, plan.rows, now), plan.forecast.mean - now
        )
        self._timeline.started(batch_id, model, plan.rows, now)
        high = plan.high
        end = self.policy.end(plan.forecast, high)
        self._running[batch_id] = RunningInfo(
            batch_id,
            slot,
            model,
            plan.rows,
            tuple(plan.requests),
            plan.deadline,
            now,
            end,
            plan.forecast.mean,
            high,
        )
        self.stats.dispatched += 1
        return Dispatch(
            batch_id,
            slot,
            model,
            tuple(r.request_id for r in plan.requests),
            plan.rows,
            now,
            end,
            plan.forecast.mean,
        )

    # -- helpers -------------------------------------------------------------------------
    def _release(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort()

    def _solo(self, model: str, rows: int) -> float:
        key = (model, rows)
        value = self._solo_cache.get(key)
        if value is None:
            value = self._solo_cache[key] = self.profile.solo_latency(model, rows)
        return value


def _urgency(q: ModelQueue) -> tuple[int, float, int]:
    head = q.head()
    assert head is not None
    return (head.priority, head.deadline, head.request_id)


__all__ = [
    "RunningInfo",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
]
