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

import bisect
import math
from collections.abc import Sequence

from predlat.errors import ConfigError
from predlat.predict.forecast import RunningBatch
from predlat.predict.timeline import TimelineTracker
from predlat.profiling.profile import Profile
from predlat.scheduling.config import RunningInfo, SchedulerConfig, SchedulerStats
from predlat.scheduling.forecasting import ForecasterLike
from predlat.scheduling.planning import Plan, Planner
from predlat.scheduling.policies import Policy
from predlat.scheduling.queues import ModelQueue
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Decision, Dispatch, Finished, Priority, Reject, Request
from predlat.scheduling.reserve import HighReserve
from predlat.traces.records import BatchRecord

# Timers fire this long after the instant a request stops being feasible, so that the
# check at wake-up sees it as infeasible despite rounding.
_WAKE_EPSILON = 1e-6
_PRIORITIES = tuple(Priority)  # iterating the enum itself is slow on the hot path
_PREFIX = {kind: f"{kind.value}: " for kind in RejectReason}  # (.value is slow too)


class Scheduler(Planner):
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
        # A round stopped at its forecast budget: when (a timer resumes it; any other event
        # starts a new round), the forecast count its event started from, and the models
        # it found infeasible, with the epoch then (not tried again when it resumes).
        self._resume_at: float | None = None
        self._round_forecasts = 0
        self._resume_skip: dict[str, int] = {}
        self._memo = {}  # (see Planner)
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
        if self._resume_at is not None:
            self._interrupt()  # a round cut short is over: the next one starts anew
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
        bisect.insort(self._free, run.slot)  # the lowest free slot is used first
        self._epoch += 1
        if self._resume_at is not None:
            self._interrupt()  # (as for an arrival)
        full = self._timeline.finished(record)
        predicted = self.forecaster.release(full)
        # What it teaches is learned after this event's decisions (see `learn`); a failed
        # batch's (meaningless) latency teaches nothing.
        if ok:
            self._to_learn.append((full, predicted))
        self.stats.finished += 1
        ids = tuple([r.request_id for r in run.requests])
        self._seen.difference_update(ids)
        out: list[Decision] = [Finished(full, ids, run.predicted_mean_end - run.start, ok)]
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
        decision round first learns whatever an earlier round left. A round cut short by
        the forecast budget is not over: learning waits until it is, so that its resumed
        part decides with the forecaster its first part had (as one uncut round would)."""
        if self._to_learn and self._resume_at is None:  # (called after every event)
            self._learn_first(len(self._to_learn))

    def _learn_first(self, n: int) -> None:
        pending = self._to_learn[:n]
        del self._to_learn[:n]
        self._stale = max(0, self._stale - n)
        learn = self.forecaster.learn
        self.stats.learned += len(pending)
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

    def running_batches(self) -> int:
        """len(running()), without copying them (a router asks every device)."""
        return len(self._running)

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
    def _admission_refusal(self, request: Request, now: float) -> tuple[RejectReason, str] | None:
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
        reason = _PREFIX[kind] + detail if detail else kind.value
        out.append(Reject(request.request_id, reason, kind))

    # -- dispatching ---------------------------------------------------------------------
    def _schedule(self, now: float, out: list[Decision], resume: bool = False) -> None:
        if not resume:  # a new round: every model may have changed
            if self._stale:  # completions an earlier round left unlearned
                self._learn_first(self._stale)
            self._stale = len(self._to_learn)  # this round's, once it has decided
            self._resume_skip.clear()
            self._memo.clear()
        self._resume_at = None
        self._round_forecasts = self.stats.forecasts
        self._expire(now, out)
        limit = self.policy.running_limit(self.num_slots)
        while self._free and len(self._running) < limit and self._queued:
            plan = self._choose(now)
            if plan is None:
                return
            out.append(self._dispatch(plan, now))

    def _dispatch(self, plan: Plan, now: float) -> Dispatch:
        slot = self._free.pop(0)
        plan.queue.remove_prefix(plan.requests)
        self._memo.clear()
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
            tuple([r.request_id for r in plan.requests]),
            plan.rows,
            now,
            end,
            plan.forecast.mean,
        )


__all__ = [
    "RunningInfo",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
]
