"""The runtime: a real device driven by a scheduler on the wall clock.

One controller owns the scheduler (the single controller, as in Clockwork): clients post
arrivals and device worker threads post batch ends to it; it feeds them to the scheduler,
carries out the decisions (device.submit), and wakes itself for the scheduler's timers.
The controller runs on a control thread of its own (`start()`), or as callbacks on an
asyncio event loop (`start(loop)`): a server on that loop then hands a request over and
gets its answer back without waking another thread, two thread wake-ups per request
(loop -> slot worker -> loop) instead of four. Both decide with the same code on the same
events; only how events reach it, how its timers are armed and when it learns from
finished batches (on the loop: after the answers went out) differ. Every request's future
is resolved exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from predlat.devices.base import BatchJob, BatchResult, Device
from predlat.errors import UnknownModelError
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.runtime.tensors import (
    InvalidInputError,
    request_rows,
    split_outputs,
    stack_inputs,
)
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Dispatch, Finished, Priority, Reject, Request
from predlat.scheduling.scheduler import Scheduler
from predlat.traces.records import BatchRecord

log = logging.getLogger(__name__)

OutcomeListener = Callable[[RequestOutcome], None]
BatchListener = Callable[[BatchRecord, float], None]
DispatchListener = Callable[[Dispatch], None]

SHUTTING_DOWN = RejectReason.SHUTTING_DOWN.value
_ARRIVAL, _DONE, _STOP, _WAKE = range(4)


@dataclass
class RuntimeStats:
    """A snapshot for metrics. Lags and errors cover the most recent batches."""

    submitted: int
    met: int
    missed: int
    rejected: int
    failed: int
    queued: int
    running: int
    batches: int
    uptime_s: float
    busy_slot_s: float
    utilization: float  # busy slot-time / (slots x uptime)
    dispatch_lag_p50_ms: float  # decision -> start on the device
    dispatch_lag_p99_ms: float
    dispatch_lag_max_ms: float
    pred_mean_rel_err: float  # |forecast at dispatch - actual| / actual


@dataclass
class _Pending:
    request: Request
    inputs: dict[str, np.ndarray] | None
    future: Future
    dispatch: Dispatch | None = None


class Runtime:
    def __init__(
        self,
        device: Device,
        scheduler: Scheduler,
        profile: Profile,
        *,
        specs: Mapping[str, ModelSpec] | None = None,
        close_device: bool = True,
        history: int = 10_000,
        switch_interval_s: float | None = 0.001,
        freeze_gc: bool = True,
    ) -> None:
        """`specs`, when given, lets `submit` check inputs against each model's graph.
        `close_device`: `stop` also closes the device (the runtime owns it).
        `switch_interval_s`: at start, lower the interpreter's thread switch interval to
        this (None: leave it). CPython hands the GIL to a waiting thread only every
        interval (5 ms by default), which would add up to that much to every hand-off
        between the control thread, clients and device workers.
        `freeze_gc`: at start, move every object alive then (models, sessions, profile,
        caller's data) out of the garbage collector's reach (gc.freeze), so a full
        collection later scans only what serving allocates: otherwise one can stall the
        control thread for tens of milliseconds."""
        self.device = device
        self.scheduler = scheduler
        self.profile = profile
        self.specs = dict(specs or {})
        self._models = set(scheduler.models)
        self._close_device = close_device
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._started = False
        # loop-hosted controller: events posted since its last round, and its timer
        self._host: asyncio.AbstractEventLoop | None = None
        self._host_thread: int | None = None  # the loop's thread, once known
        self._post_lock = threading.Lock()
        self._posted: list[tuple[int, object]] = []
        self._round_due = False
        self._learn_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drained: asyncio.Future | None = None
        self._accepting = False
        self._stopped = threading.Event()
        self._listeners: list[OutcomeListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._dispatch_listeners: list[DispatchListener] = []
        self._dispatches: dict[int, Dispatch] = {}
        self._results: dict[int, BatchResult] = {}
        self._draining = False
        # statistics (written by the controller, read by anyone)
        self._counts = dict.fromkeys(("submitted", "met", "missed", "rejected", "failed"), 0)
        self._batches = 0
        self._busy = 0.0
        self._lags: collections.deque[float] = collections.deque(maxlen=history)
        self._errors: collections.deque[float] = collections.deque(maxlen=history)
        self._started_at = 0.0
        self._switch_interval_s = switch_interval_s
        self._freeze_gc = freeze_gc
        self._frozen = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the controller: on a control thread of its own, or, given `loop`, as
        callbacks on that event loop (stop it then with `await stop_async()` on the loop).
        `submit` may be called from any thread either way."""
        if self._started:
            raise RuntimeError("runtime already started")
        if self._switch_interval_s and sys.getswitchinterval() > self._switch_interval_s:
            sys.setswitchinterval(self._switch_interval_s)
        if self._freeze_gc:
            gc.collect()
            gc.freeze()
            self._frozen = True
        self._started = True
        self._started_at = self.device.now()
        self._accepting = True
        if loop is not None:
            self._host = loop
            if _running_loop() is loop:  # else learnt at the controller's first round
                self._host_thread = threading.get_ident()
            return
        self._start_control_thread()

    @property
    def started(self) -> bool:
        """Whether `start` was called (the runtime may have been stopped since)."""
        return self._started

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting requests; with `drain`, finish queued work, else reject it with
        reason "shutting down"; wait for running batches (at most `timeout` s), then stop.
        Whatever is still unresolved after `timeout` is rejected. A no-op once stopped.
        For a loop-hosted runtime, from another thread: stops it on its loop; when that
        loop has ended, a control thread takes over and finishes the job."""
        host = self._host
        if host is not None and host.is_running():
            if _running_loop() is host:
                raise RuntimeError("a runtime hosted on this event loop stops with stop_async")
            stopping = asyncio.run_coroutine_threadsafe(self.stop_async(drain, timeout), host)
            with contextlib.suppress(Exception):  # the loop ended meanwhile: see below
                stopping.result(timeout + 5.0)
            if self._host is None:
                return
        if host is not None and not host.is_running():
            self._hand_to_thread()
        with self._lock:
            if not self._accepting and self._thread is None and self._host is None:
                return
            self._accepting = False
        if self._thread is not None:
            self._inbox.put((_STOP, drain))
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._inbox.put((_STOP, False))
                self._thread.join(1.0)
        with self._post_lock:
            self._host = None  # (a loop that never let the controller finish)
        for rid in list(self._pending):
            self._resolve_unrun(rid, "rejected", SHUTTING_DOWN, RejectReason.SHUTTING_DOWN)
        self._thread = None
        self._release()

    async def stop_async(self, drain: bool = True, timeout: float = 30.0) -> None:
        """`stop` for a runtime hosted on the running event loop, awaited on that loop:
        it lets the controller drain (or reject) queued work and finish running batches
        while the loop goes on serving. For a thread-hosted runtime it runs `stop` in a
        worker thread."""
        host = self._host
        if host is None:
            await asyncio.to_thread(self.stop, drain, timeout)
            return
        if asyncio.get_running_loop() is not host:
            raise RuntimeError("stop_async must be awaited on the loop the runtime runs on")
        with self._lock:
            self._accepting = False
        if self._drained is None:
            self._drained = host.create_future()
            self._post((_STOP, drain))
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        except TimeoutError:
            self._post((_STOP, False))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), 1.0)
        with self._post_lock:
            if self._host is None:
                return  # a concurrent stop_async finished the job
            self._host = None
            self._posted.clear()
        self._cancel_timer()
        for rid in list(self._pending):
            self._resolve_unrun(rid, "rejected", SHUTTING_DOWN, RejectReason.SHUTTING_DOWN)
        await asyncio.to_thread(self._release)  # closing joins the slot threads

    def _release(self) -> None:
        """The end of every stop: close the device if the runtime owns it, and undo
        `start`'s gc.freeze. Frozen objects are never collected, so without that a
        stopped runtime's reference cycles (its device, sessions, threads: hundreds of
        MB) would outlive it, and a process that runs runtimes one after another (an
        experiment) would grow and slow down with each."""
        if self._close_device:
            self.device.close()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def now(self) -> float:
        return self.device.now()

    @property
    def models(self) -> list[str]:
        return self.scheduler.models

    # -- requests ------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        inputs: dict[str, np.ndarray] | None,
        *,
        deadline_s: float,
        priority: Priority = Priority.LOW,
        waited_s: float = 0.0,
    ) -> Future:
        """Queue one request (thread-safe). `deadline_s` is relative to its arrival,
        `waited_s` seconds ago (a server counts reading and decoding the body against the
        deadline); the request's rows are the first axis of its inputs (1 if None). The
        future resolves to a RequestOutcome exactly once."""
        if model not in self._models:
            raise UnknownModelError(
                f"model '{model}' is not served (serving: {', '.join(self.models)})"
            )
        if not math.isfinite(deadline_s):
            raise InvalidInputError(
                f"deadline must be a finite number of seconds, got {deadline_s}"
            )
        rows = request_rows(model, inputs, self.specs.get(model))
        arrival = self.device.now() - max(0.0, waited_s)
        future: Future = Future()
        request = Request(
            next(self._ids), model, arrival, arrival + deadline_s, Priority(priority), rows
        )
        with self._lock:
            self._pending[request.request_id] = _Pending(request, inputs, future)
            self._counts["submitted"] += 1
            accepting = self._accepting
        if accepting:
            self._post((_ARRIVAL, request))
        else:
            self._resolve_unrun(
                request.request_id, "rejected", SHUTTING_DOWN, RejectReason.SHUTTING_DOWN
            )
        return future

    def add_listener(self, on_outcome: OutcomeListener) -> None:
        """Called (on the controller's thread: the control thread, or the event loop
        hosting the runtime) with every request's outcome."""
        self._listeners.append(on_outcome)

    def add_batch_listener(self, on_batch: BatchListener) -> None:
        """Called (on the controller's thread) with every finished batch (with its timeline)
        and the latency forecast when it was dispatched (s)."""
        self._batch_listeners.append(on_batch)

    def add_dispatch_listener(self, on_dispatch: DispatchListener) -> None:
        """Called (on the controller's thread) with every dispatch decision carried out:
        the forecast it was admitted with (planned and mean end), before it runs."""
        self._dispatch_listeners.append(on_dispatch)

    # -- metrics -------------------------------------------------------------------------
    def queue_lengths(self) -> dict[str, int]:
        """Queued requests per model (a racy snapshot, fine for metrics)."""
        return self.scheduler.queue_lengths()

    def running_batches(self) -> int:
        return len(self._dispatches)

    def utilization(self) -> float:
        """Busy slot-time over slot-time since start (0..1)."""
        up = max(self.device.now() - self._started_at, 1e-9)
        return self._busy / (self.device.num_slots * up)

    def stats(self) -> RuntimeStats:
        lags = np.asarray(self._lags) if self._lags else np.asarray([np.nan])
        errs = list(self._errors)
        up = max(self.device.now() - self._started_at, 1e-9) if self._started_at else 0.0
        return RuntimeStats(
            **self._counts,
            queued=self.scheduler.queued(),
            running=len(self._dispatches),
            batches=self._batches,
            uptime_s=up,
            busy_slot_s=self._busy,
            utilization=self.utilization() if up else 0.0,
            dispatch_lag_p50_ms=float(np.percentile(lags, 50) * 1e3),
            dispatch_lag_p99_ms=float(np.percentile(lags, 99) * 1e3),
            dispatch_lag_max_ms=float(np.max(lags) * 1e3),
            pred_mean_rel_err=float(np.mean(errs)) if errs else float("nan"),
        )

    def dispatch_lags(self) -> list[float]:
        """Recent dispatch lags (s): decision to start on the device."""
        return list(self._lags)

    # -- posting events to the controller ------------------------------------------------
    def _post(self, event: tuple[int, object]) -> None:
        """Hand an event to the controller, from any thread. On a loop, events posted
        until its next round are decided in that one round (like a burst on the thread)."""
        host = self._host
        if host is None:
            self._inbox.put(event)
            return
        with self._post_lock:
            if self._host is None:  # handed to a control thread meanwhile
                self._inbox.put(event)
                return
            self._posted.append(event)
            if self._round_due:
                return
            self._round_due = True
        try:
            if threading.get_ident() == self._host_thread:
                # One callback pass later: the round then also takes the requests the
                # loop reads in meanwhile. Under load that keeps batches as large as the
                # control thread gets them (half the batches, a fifth more requests/s);
                # idle, it costs a few microseconds.
                host.call_soon(host.call_soon, self._round)
            else:
                host.call_soon_threadsafe(self._round)
        except RuntimeError:  # the loop is closed: `stop` hands what is posted to a thread
            log.debug("event loop closed; event kept for stop()")

    # -- the loop-hosted controller ----------------------------------------------------------
    def _round(self) -> None:
        """One round of the controller on its event loop: every event posted since the
        last round (none: a timer), then the scheduler's next timer."""
        with self._post_lock:
            host = self._host
            if host is None:
                return  # stopped, or handed to a control thread
            events, self._posted = self._posted, []
            self._round_due = False
        self._host_thread = threading.get_ident()
        try:
            self._decide(events)
        except Exception:  # the controller must survive anything one event does
            log.exception("control loop error")
        if not self._learn_due:
            # Learning waits behind the callbacks the decisions queued (handlers whose
            # requests just resolved), so answers go out first; a round that comes
            # earlier learns first anyway (Scheduler.learn).
            self._learn_due = True
            host.call_soon(self._learn)
        self._arm_timer()
        drained = self._drained
        if self._draining and self.scheduler.idle() and drained is not None and not drained.done():
            drained.set_result(None)

    def _learn(self) -> None:
        self._learn_due = False
        if self._host is not None:  # (else stopped, or a control thread took over)
            try:
                self.scheduler.learn()
            except Exception:
                log.exception("learning failed")

    def _arm_timer(self) -> None:
        wake = self.scheduler.next_wakeup()
        if wake == self._timer_at:
            return
        self._cancel_timer()
        host = self._host
        if wake is None or host is None:
            return
        # Loops time in whole milliseconds (uvloop rounds, epoll rounds up): rounding up
        # means a timer never fires early and spins. The scheduler's timers only reject
        # requests that can no longer be met, so firing up to 1 ms late costs nothing.
        delay = math.ceil(max(0.0, wake - self.device.now()) * 1e3) / 1e3
        self._timer_at = wake
        self._timer = host.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._round()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._timer.cancel()
        self._timer, self._timer_at = None, None

    def _hand_to_thread(self) -> None:
        """The hosting loop has ended with work left: a control thread takes over the
        controller (no loop callback can run any more), with every event posted so far."""
        with self._post_lock:
            self._host = None
            for event in self._posted:
                self._inbox.put(event)
            self._posted.clear()
            self._round_due = False
        self._cancel_timer()
        self._start_control_thread()

    def _start_control_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="predlat-control", daemon=True)
        self._thread.start()

    # -- the control thread ----------------------------------------------------------------
    def _loop(self) -> None:
        sched = self.scheduler
        while True:
            wake = sched.next_wakeup()
            timeout = None if wake is None else max(0.0, wake - self.device.now())
            try:
                events = [self._inbox.get(timeout=timeout)]
            except queue.Empty:
                events = [(_WAKE, None)]
            while True:  # take everything already posted: arrivals of a burst batch together
                try:
                    events.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._decide(events)
                sched.learn()  # once the decisions are out: learning never delays a dispatch
            except Exception:  # the controller must survive anything one event does
                log.exception("control loop error")
            if self._draining and sched.idle():
                return

    def _decide(self, events: list[tuple[int, object]]) -> None:
        """Feed events to the scheduler and carry out its decisions."""
        sched = self.scheduler
        decisions: list = []
        for kind, payload in events:
            now = self.device.now()
            if kind == _ARRIVAL:
                decisions += sched.on_arrival(payload, now, dispatch=False)
            elif kind == _DONE:
                decisions += self._completed(payload, now)
            elif kind == _STOP:
                self._draining = True
                if not payload:
                    decisions += sched.reject_all()
        now = self.device.now()
        decisions += sched.on_tick(now)
        self._execute(decisions)

    def _completed(self, result: BatchResult, now: float) -> list:
        d = self._dispatches.pop(result.batch_id)
        self._results[result.batch_id] = result
        self._lags.append(max(0.0, result.start - d.decided_at))
        self._busy += result.end - result.start
        self._batches += 1
        record = BatchRecord.from_result(result, d.decided_at)
        return self.scheduler.on_complete(record, now, ok=result.error is None, dispatch=False)

    def _execute(self, decisions: Sequence[object]) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                self._run(d)
            elif isinstance(d, Reject):
                self._resolve_unrun(d.request_id, "rejected", d.reason, d.kind)
            elif isinstance(d, Finished):
                self._finished(d)

    def _run(self, d: Dispatch) -> None:
        parts = []
        for rid in d.request_ids:
            p = self._pending[rid]
            p.dispatch = d
            parts.append(p)
        self._dispatches[d.batch_id] = d
        for listener in self._dispatch_listeners:
            _call(listener, d)
        try:
            job = BatchJob(
                d.batch_id,
                d.model,
                d.batch_size,
                stack_inputs([(p.inputs, p.request.size) for p in parts]),
            )
            self.device.submit(d.slot, job, self._on_done)
        except Exception as exc:  # a bad batch fails alone; the device stays usable
            now = self.device.now()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            self._post(
                (
                    _DONE,
                    BatchResult(d.batch_id, d.model, d.batch_size, d.slot, now, now, error=message),
                )
            )

    def _on_done(self, result: BatchResult) -> None:  # device worker thread
        self._post((_DONE, result))

    def _finished(self, f: Finished) -> None:
        rec = f.record
        result = self._results.pop(rec.batch_id)
        if f.ok:
            if rec.latency > 0:
                self._errors.append(abs(f.predicted_latency - rec.latency) / rec.latency)
            for listener in self._batch_listeners:
                _call(listener, rec, f.predicted_latency)
        rows = [self._pending[rid].request.size for rid in f.request_ids]
        outputs = split_outputs(result.outputs, rows) if f.ok else [None] * len(rows)
        for rid, out in zip(f.request_ids, outputs, strict=True):
            p = self._pending.get(rid)
            if p is None:
                continue
            reason = None if f.ok else result.error or "engine failed"
            outputs = out if p.inputs is not None else None
            self._resolve(rid, RequestOutcome.ran(p.request, rec, f.ok, reason, outputs))

    # -- resolving -----------------------------------------------------------------------
    def _resolve_unrun(
        self, rid: int, status: str, reason: str, kind: RejectReason | None = None
    ) -> None:
        p = self._pending.get(rid)
        if p is not None:
            self._resolve(rid, RequestOutcome.unrun(p.request, status, reason, kind))

    def _resolve(self, rid: int, outcome: RequestOutcome) -> None:
        with self._lock:
            p = self._pending.pop(rid, None)
            if p is None:
                return  # already resolved (exactly once)
            self._counts[outcome.status] += 1
        p.future.set_result(outcome)
        for listener in self._listeners:
            _call(listener, outcome)

    # -- inputs --------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _call(listener: Callable, *args: object) -> None:
    try:
        listener(*args)
    except Exception:  # a broken listener must not break serving
        log.exception("listener %r failed", listener)
