"""The driver core: a scheduler's decisions carried out on one device.

It owns the pending requests, feeds events (arrivals, batch ends, stop) to the scheduler,
carries out its decisions (Dispatch, Reject, Finished), turns device results into
`BatchRecord`s and requests' `RequestOutcome`s, and keeps the statistics. It starts no
thread and arms no timer: a host (`Runtime`) brings events to `_decide` and hands events
back through `_post`. Time is the device's (`device.now()`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from predlat.devices.base import BatchJob, BatchResult, Device
from predlat.runtime.tensors import split_outputs, stack_inputs
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Dispatch, Finished, Reject, Request
from predlat.scheduling.scheduler import Scheduler
from predlat.traces.ledger import BatchLedger
from predlat.traces.records import BatchRecord

log = logging.getLogger(__name__)

OutcomeListener = Callable[[RequestOutcome], None]
BatchListener = Callable[[BatchRecord, float], None]
DispatchListener = Callable[[Dispatch], None]

SHUTTING_DOWN = RejectReason.SHUTTING_DOWN.value
ARRIVAL, DONE, STOP, WAKE = range(4)  # event kinds
Event = tuple[int, object]


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


class DriverCore:
    """Pending requests and in-flight batches of one device under one scheduler."""

    def __init__(self, device: Device, scheduler: Scheduler, history: int) -> None:
        self.device = device
        self.scheduler = scheduler
        self._lock = threading.Lock()  # guards pending and counts: clients submit too
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._ledger = BatchLedger(device.num_slots)
        self._results: dict[int, BatchResult] = {}
        self._accepting = False  # whether arrivals go to the scheduler (set by the host)
        self._draining = False
        self._listeners: list[OutcomeListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._dispatch_listeners: list[DispatchListener] = []
        # statistics (written by the controller, read by anyone)
        self._counts = dict.fromkeys(("submitted", "met", "missed", "rejected", "failed"), 0)
        self._lags: collections.deque[float] = collections.deque(maxlen=history)
        self._errors: collections.deque[float] = collections.deque(maxlen=history)
        self._started_at = 0.0

    def _post(self, event: Event) -> None:
        """Hand an event back to the controller (the host's; from any thread)."""
        raise NotImplementedError

    # -- listeners -----------------------------------------------------------------------
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

    def utilization(self) -> float:
        """Busy slot-time over slot-time since start (0..1)."""
        up = max(self.device.now() - self._started_at, 1e-9)
        return self._ledger.busy_s / (self.device.num_slots * up)

    def stats(self) -> RuntimeStats:
        lags = np.asarray(self._lags) if self._lags else np.asarray([np.nan])
        errs = list(self._errors)
        up = max(self.device.now() - self._started_at, 1e-9) if self._started_at else 0.0
        return RuntimeStats(
            **self._counts,
            queued=self.scheduler.queued(),
            running=self._ledger.running(),
            batches=self._ledger.batches,
            uptime_s=up,
            busy_slot_s=self._ledger.busy_s,
            utilization=self.utilization() if up else 0.0,
            dispatch_lag_p50_ms=float(np.percentile(lags, 50) * 1e3),
            dispatch_lag_p99_ms=float(np.percentile(lags, 99) * 1e3),
            dispatch_lag_max_ms=float(np.max(lags) * 1e3),
            pred_mean_rel_err=float(np.mean(errs)) if errs else float("nan"),
        )

    # -- deciding ------------------------------------------------------------------------
    def _admit(self, request: Request, inputs: dict[str, np.ndarray] | None) -> tuple[Future, bool]:
        """Make `request` pending; returns its future and whether arrivals are accepted
        (read together with the insert, so a stop either sees the request or refuses it)."""
        future: Future = Future()
        with self._lock:
            self._pending[request.request_id] = _Pending(request, inputs, future)
            self._counts["submitted"] += 1
            accepting = self._accepting
        return future, accepting

    def _decide(self, events: list[Event]) -> None:
        """Feed events to the scheduler and carry out its decisions."""
        sched = self.scheduler
        decisions: list = []
        try:
            for kind, payload in events:
                now = self.device.now()
                if kind == ARRIVAL:
                    decisions += sched.on_arrival(payload, now, dispatch=False)
                elif kind == DONE:
                    decisions += self._completed(payload, now)
                elif kind == STOP:
                    self._draining = True
                    if not payload:
                        decisions += sched.reject_all()
            now = self.device.now()
            decisions += sched.on_tick(now)
        finally:
            # A round that fails still carries out what was decided before the failure
            # (answers of finished batches above all): dropped, their requests would
            # never be answered.
            self._execute(decisions)

    def _completed(self, result: BatchResult, now: float) -> list:
        record = self._ledger.finish(result)
        self._results[result.batch_id] = result
        self._lags.append(max(0.0, record.start - record.dispatch))
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
        self._ledger.dispatched(d.batch_id, d.slot, d.decided_at)
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
            failed = BatchResult(d.batch_id, d.model, d.batch_size, d.slot, now, now, error=message)
            self._post((DONE, failed))

    def _on_done(self, result: BatchResult) -> None:  # device worker thread
        self._post((DONE, result))

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
            kept = out if p.inputs is not None else None
            self._resolve(rid, RequestOutcome.ran(p.request, rec, f.ok, reason, kept))

    # -- resolving -----------------------------------------------------------------------
    def _resolve_unrun(
        self, rid: int, status: str, reason: str, kind: RejectReason | None = None
    ) -> None:
        p = self._pending.get(rid)
        if p is not None:
            self._resolve(rid, RequestOutcome.unrun(p.request, status, reason, kind))

    def _reject_pending(self) -> None:
        """Reject whatever is still unresolved (the end of a stop)."""
        for rid in list(self._pending):
            self._resolve_unrun(rid, "rejected", SHUTTING_DOWN, RejectReason.SHUTTING_DOWN)

    def _resolve(self, rid: int, outcome: RequestOutcome) -> None:
        with self._lock:
            p = self._pending.pop(rid, None)
            if p is None:
                return  # already resolved (exactly once)
            self._counts[outcome.status] += 1
        p.future.set_result(outcome)
        for listener in self._listeners:
            _call(listener, outcome)


def _call(listener: Callable, *args: object) -> None:
    try:
        listener(*args)
    except Exception:  # a broken listener must not break serving
        log.exception("listener %r failed", listener)
