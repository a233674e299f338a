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
import contextlib
import logging
import math
import queue
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future

import numpy as np

from predlat.devices.base import Device
from predlat.errors import UnknownModelError
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.runtime.core import (
    ARRIVAL,
    SHUTTING_DOWN,
    STOP,
    WAKE,
    BatchListener,
    DispatchListener,
    DriverCore,
    Event,
    OutcomeListener,
    RuntimeStats,
)
from predlat.runtime.gc_policy import AppliedGcPolicy, GcPolicy
from predlat.runtime.tensors import InvalidInputError, request_rows
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.scheduler import Scheduler

__all__ = [
    "BatchListener",
    "DispatchListener",
    "OutcomeListener",
    "RequestOutcome",
    "Runtime",
    "RuntimeStats",
]

log = logging.getLogger(__name__)


class Runtime(DriverCore):
    """The driver core hosted on the wall clock: on a control thread or an event loop."""

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
        control thread for tens of milliseconds; and make its passes rarer (a higher
        young-generation threshold), so fewer events pay for one (see
        predlat.runtime.gc_policy). Both are undone at stop."""
        super().__init__(device, scheduler, history)
        self.profile = profile
        self.specs = dict(specs or {})
        self._models = set(scheduler.models)
        self._close_device = close_device
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = False
        # loop-hosted controller: events posted since its last round, and its timer
        self._host: asyncio.AbstractEventLoop | None = None
        self._host_thread: int | None = None  # the loop's thread, once known
        self._post_lock = threading.Lock()
        self._posted: list[Event] = []
        self._round_due = False
        self._learn_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drained: asyncio.Future | None = None
        self._switch_interval_s = switch_interval_s
        self._gc_policy = GcPolicy() if freeze_gc else None
        self._gc: AppliedGcPolicy | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the controller: on a control thread of its own, or, given `loop`, as
        callbacks on that event loop (stop it then with `await stop_async()` on the loop).
        `submit` may be called from any thread either way."""
        if self._started:
            raise RuntimeError("runtime already started")
        if self._switch_interval_s and sys.getswitchinterval() > self._switch_interval_s:
            sys.setswitchinterval(self._switch_interval_s)
        if self._gc_policy is not None:
            self._gc = self._gc_policy.apply()
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

    def hosted_here(self) -> bool:
        """Whether the event loop running in this thread hosts the runtime (it is then
        stopped with `await stop_async()`, not `stop`)."""
        host = self._host
        return host is not None and _running_loop() is host

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting requests; with `drain`, finish queued work, else reject it with
        reason "shutting down"; wait for running batches (at most `timeout` s), then stop.
        Whatever is still unresolved after `timeout` is rejected. A no-op once stopped.
        For a loop-hosted runtime, from another thread: stops it on its loop; when that
        loop has ended, a control thread takes over and finishes the job."""
        host = self._host
        if host is not None and host.is_running():
            if self.hosted_here():
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
            self._inbox.put((STOP, drain))
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._inbox.put((STOP, False))
                self._thread.join(1.0)
        with self._post_lock:
            self._host = None  # (a loop that never let the controller finish)
        self._reject_pending()
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
            self._post((STOP, drain))
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        except TimeoutError:
            self._post((STOP, False))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), 1.0)
        with self._post_lock:
            if self._host is None:
                return  # a concurrent stop_async finished the job
            self._host = None
            self._posted.clear()
        self._cancel_timer()
        self._reject_pending()
        await asyncio.to_thread(self._release)  # closing joins the slot threads

    def _release(self) -> None:
        """The end of every stop: close the device if the runtime owns it, and undo
        `start`'s garbage-collector policy. Frozen objects are never collected, so without
        that a stopped runtime's reference cycles (its device, sessions, threads: hundreds of
        MB) would outlive it, and a process that runs runtimes one after another (an
        experiment) would grow and slow down with each."""
        if self._close_device:
            self.device.close()
        if self._gc is not None:
            self._gc.close()
            self._gc = None

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
        request = Request(
            next(self._ids), model, arrival, arrival + deadline_s, Priority(priority), rows
        )
        future, accepting = self._admit(request, inputs)
        if accepting:
            self._post((ARRIVAL, request))
        else:
            self._resolve_unrun(
                request.request_id, "rejected", SHUTTING_DOWN, RejectReason.SHUTTING_DOWN
            )
        return future

    # -- posting events to the controller ------------------------------------------------
    def _post(self, event: Event) -> None:
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
                events = [(WAKE, None)]
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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
