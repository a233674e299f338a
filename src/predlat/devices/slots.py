"""Slots as worker threads: what every threaded device (ONNX Runtime, torch) shares.

Each slot is a thread that runs the batches handed to it one at a time and calls back
from that thread; the device refuses a batch for a busy slot.
"""

from __future__ import annotations

import queue
import threading
import time

from predlat.devices.base import BatchJob, BatchResult, DoneCallback, SlotBusyError, wait_for
from predlat.devices.priority import lower_priority
from predlat.errors import ConfigError

_STOP = object()


class SlotWorker:
    """One slot's worker thread. Subclasses say how a batch runs (`run`) and may set the
    thread up first (`init`); `start` once they are ready."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.busy = False
        # CPU seconds this thread spent running batches (only it writes it): what the
        # host's own work (scheduling, hand-offs, the client) is told apart from. With
        # intra-op threads, ONNX Runtime's pool threads are not counted.
        self.cpu_s = 0.0
        # SimpleQueue (C, no Condition): the cheapest hand-over that wakes a waiting thread
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def init(self) -> None:
        """Called on the worker thread before its first batch."""

    def run(self, job: BatchJob) -> BatchResult:
        """Run one batch on the worker thread; never raises."""
        raise NotImplementedError

    def _loop(self) -> None:
        self.init()
        while True:
            item = self.jobs.get()
            if item is _STOP:
                return
            job, on_done = item
            began = time.thread_time()
            result = self.run(job)
            self.cpu_s += time.thread_time() - began
            self.busy = False
            on_done(result)


class SlotDevice:
    """`submit`, `run_sync`, `now` and stopping for a device whose slots are
    `SlotWorker`s (`self._slots`, guarded by `self._lock`)."""

    num_slots: int
    _slots: list[SlotWorker]
    _lock: threading.Lock

    def submit(self, slot: int, job: BatchJob, on_done: DoneCallback) -> None:
        if not 0 <= slot < self.num_slots:
            raise ConfigError(f"slot {slot} does not exist (device has {self.num_slots})")
        worker = self._slots[slot]
        with self._lock:
            if worker.busy:
                raise SlotBusyError(f"slot {slot} is busy")
            worker.busy = True
        worker.jobs.put((job, on_done))

    def run_sync(self, slot: int, job: BatchJob) -> BatchResult:
        """Run one batch on `slot` and wait for it (profiling, tests)."""
        return wait_for(self, slot, job)  # type: ignore[arg-type]

    def now(self) -> float:
        return time.perf_counter()

    def compute_cpu_s(self) -> float:
        """CPU seconds the slot threads spent running batches so far (see SlotWorker)."""
        return sum(w.cpu_s for w in self._slots)

    def lower_priority(self, steps: int) -> int:
        """Raise the slot threads' nice value by `steps` (see predlat.devices.priority):
        the threads that serve requests win the cores from batches. Returns how many
        threads changed."""
        return sum(
            lower_priority(steps, w.thread.native_id)
            for w in self._slots
            if w.thread.native_id is not None and w.thread.is_alive()
        )

    def _stop_workers(self) -> None:
        for worker in self._slots:
            worker.jobs.put(_STOP)
        for worker in self._slots:
            worker.thread.join(timeout=30)
