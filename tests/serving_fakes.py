"""A stand-in Runtime for server tests: the same submit / add_listener /
add_batch_listener / stop API, futures resolved on a worker thread, every request run
alone through ONNX Runtime. Exact and fast, with knobs to reject, fail or hold requests."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort

from predlat.errors import UnknownModelError
from predlat.models.spec import ModelSpec
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority
from predlat.traces.records import BatchRecord

# Decides before running: a reason string rejects the request, None runs it.
Gate = Callable[[str, dict[str, np.ndarray] | None, float, Priority], str | None]


class FakeRuntime:
    def __init__(self, specs: Sequence[ModelSpec], gate: Gate | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.sessions = {
            s.name: ort.InferenceSession(str(s.path), providers=["CPUExecutionProvider"])
            for s in specs
        }
        self.gate = gate
        self.hold = threading.Event()  # set: requests wait before running
        self.fail_next = False
        self.submitted: list[tuple[str, float, Priority]] = []
        self.waits: list[float] = []  # waited_s of each submit: time before the runtime
        self.outcomes: list[RequestOutcome] = []
        self.batches: list[BatchRecord] = []
        self._listeners: list[Callable[[RequestOutcome], None]] = []
        self._batch_listeners: list[Callable[[BatchRecord, float], None]] = []
        self._ids = itertools.count()
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.stopped = False
        self._worker = threading.Thread(target=self._loop, daemon=True)
        self._worker.start()

    # -- Runtime API --------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter()

    def add_listener(self, on_outcome: Callable[[RequestOutcome], None]) -> None:
        self._listeners.append(on_outcome)

    def add_batch_listener(self, on_batch: Callable[[BatchRecord, float], None]) -> None:
        self._batch_listeners.append(on_batch)

    def submit(
        self,
        model: str,
        inputs: dict[str, np.ndarray] | None,
        *,
        deadline_s: float,
        priority: Priority = Priority.LOW,
        waited_s: float = 0.0,
    ) -> Future:
        if model not in self.specs:
            raise UnknownModelError(f"unknown model '{model}'")
        future: Future = Future()
        arrival = self.now() - waited_s
        rid = next(self._ids)
        with self._lock:
            self.submitted.append((model, deadline_s, priority))
            self.waits.append(waited_s)
        base = RequestOutcome(
            rid, model, priority, "rejected", None, None, arrival, arrival + deadline_s
        )
        reason = "shutting down" if self.stopped else None
        if reason is None and self.gate is not None:
            reason = self.gate(model, inputs, deadline_s, priority)
        if reason is not None:
            base.reason = reason
            # As the scheduler tags it: each kind's value starts its wording.
            base.rejected_for = next((k for k in RejectReason if reason.startswith(k.value)), None)
            self._resolve(future, base)
        else:
            self._jobs.put((future, base, inputs))
        return future

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        self.stopped = True
        self.hold.clear()
        self._jobs.put(None)
        self._worker.join(timeout)

    # -- helpers ------------------------------------------------------------------------
    def _resolve(self, future: Future, outcome: RequestOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
        for listener in self._listeners:
            listener(outcome)
        future.set_result(outcome)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            while self.hold.is_set():
                time.sleep(0.001)
            future, outcome, inputs = job
            self._run(future, outcome, inputs)

    def _run(self, future: Future, outcome: RequestOutcome, inputs: dict | None) -> None:
        session = self.sessions[outcome.model]
        rows = next(iter(inputs.values())).shape[0] if inputs else 1
        outcome.dispatch = outcome.start = self.now()
        if self.fail_next:
            self.fail_next = False
            outcome.status, outcome.reason = "failed", "engine exploded"
            outcome.end = self.now()
            self._resolve(future, outcome)
            return
        names = [o.name for o in session.get_outputs()]
        values = session.run(None, inputs) if inputs else None
        outcome.end = self.now()
        outcome.outputs = dict(zip(names, values, strict=True)) if values else None
        outcome.batch_id, outcome.batch_size = outcome.request_id, rows
        outcome.status = "met" if outcome.end <= outcome.deadline else "missed"
        record = BatchRecord(
            outcome.request_id, outcome.model, rows, 0, outcome.dispatch, outcome.start, outcome.end
        )
        with self._lock:
            self.batches.append(record)
        for listener in self._batch_listeners:
            listener(record, 1.1 * record.latency)
        self._resolve(future, outcome)
