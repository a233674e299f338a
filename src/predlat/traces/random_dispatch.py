"""The control loop of a trace collection and its random-dispatch policy.

Requests wait in per-model queues; a dispatcher runs up to K batches at once, one per
slot, and batch sizes are drawn at random so that a trace covers small and large batches
beside every kind of co-runner. The slots held and the records of ended batches are kept
by a `BatchLedger`, as the runtime's driver core keeps them.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from predlat.devices.base import BatchJob, BatchResult, Device
from predlat.traces.cpu import CPU_SAMPLE_S, CpuMeter
from predlat.traces.ledger import BatchLedger
from predlat.traces.records import BatchRecord

if TYPE_CHECKING:
    from predlat.traces.collect import CollectConfig

_TICK_S = 0.1  # progress refresh period


class RandomDispatcher:
    """Per-model queues and the greedy batching rule (state of one collection run).

    Each model's queue has a random target batch size in 1..max_batch. A queue is ready
    when it holds the target, or when its oldest request has waited the time the target
    takes to arrive on average (target / rate), so batches of every size occur at any
    load. Whenever a slot is free and a queue is ready, the queue whose head arrived
    first is dispatched.
    """

    def __init__(self, rates: dict[str, float], max_batch: int, rng: np.random.Generator):
        self.rates = rates
        self.max_batch = max_batch
        self.rng = rng
        self.queues: dict[str, deque[float]] = {m: deque() for m in rates}
        self.targets = {m: self._draw() for m in rates}

    def _draw(self) -> int:
        return int(self.rng.integers(1, self.max_batch + 1))

    def window(self, model: str) -> float:
        rate = self.rates[model]
        return self.targets[model] / rate if rate > 0 else 0.0

    def ready_at(self, model: str) -> float | None:
        """When the queue becomes ready (None if empty)."""
        q = self.queues[model]
        if not q:
            return None
        if len(q) >= self.targets[model]:
            return q[0]
        return q[0] + self.window(model)

    def pick(self, now: float) -> tuple[str, int] | None:
        """The model and batch size to dispatch now, or None."""
        best: tuple[float, str] | None = None
        for model, q in self.queues.items():
            at = self.ready_at(model)
            if at is not None and at <= now and (best is None or q[0] < best[0]):
                best = (q[0], model)
        if best is None:
            return None
        model = best[1]
        q = self.queues[model]
        size = min(len(q), self.targets[model], self.max_batch)
        for _ in range(size):
            q.popleft()
        self.targets[model] = self._draw()
        return model, size

    def next_ready(self) -> float | None:
        times = [t for m in self.queues if (t := self.ready_at(m)) is not None]
        return min(times) if times else None

    def drop_all(self) -> int:
        dropped = sum(len(q) for q in self.queues.values())
        for q in self.queues.values():
            q.clear()
        return dropped


class CollectionRun:
    """The control loop of one collection: admits arrivals, dispatches, records ends."""

    def __init__(
        self,
        device: Device,
        config: CollectConfig,
        dispatcher: RandomDispatcher,
        times: list[float],
        models: list[str],
    ) -> None:
        self.device = device
        self.config = config
        self.dispatcher = dispatcher
        self.times = times
        self.models = models
        self.events: queue.SimpleQueue[BatchResult] = queue.SimpleQueue()
        self.ledger = BatchLedger(config.concurrency)
        self.done: list[BatchRecord] = []
        self.dropped = 0
        self.failure: str | None = None
        self.wall_s = 0.0
        self.t0 = 0.0
        self.next_id = 0
        self.meter = CpuMeter()
        self.cpu_samples: list[tuple[float, float]] = []  # (end of period, foreign share)

    def loop(self, tick: Callable[[float], None] | None) -> None:
        t0 = self.t0 = self.ledger.t0 = self.device.now()
        i, closed, last_tick, last_sample = 0, False, -1.0, 0.0
        self.meter.sample()
        while True:
            now = self.device.now() - t0
            while not closed and i < len(self.times) and self.times[i] <= now:
                self.dispatcher.queues[self.models[i]].append(self.times[i])
                i += 1
            if not closed and (now >= self.config.duration or self.failure):
                closed = True  # arrivals are over: what is still queued never runs
                self.dropped = self.dispatcher.drop_all()
            if not closed:
                self._dispatch(now)
            if closed and not self.ledger.running():
                break
            if tick and now - last_tick >= _TICK_S:
                tick(now)
                last_tick = now
            if now - last_sample >= CPU_SAMPLE_S:
                self._sample_cpu(now)
                last_sample = now
            wake = [now + _TICK_S]
            if not closed:
                wake.append(self.config.duration)
                if i < len(self.times):
                    wake.append(self.times[i])
                if self.ledger.free_slots() and (ready := self.dispatcher.next_ready()) is not None:
                    wake.append(ready)
            self._wait(max(0.0, min(wake) - (self.device.now() - t0)))
        self.wall_s = self.device.now() - t0
        self._sample_cpu(self.wall_s)
        if tick:
            tick(self.wall_s)

    def _sample_cpu(self, now: float) -> None:
        frac = self.meter.sample()
        if frac is not None:
            self.cpu_samples.append((round(now, 3), round(frac, 4)))

    def _dispatch(self, now: float) -> None:
        while free := self.ledger.free_slots():
            choice = self.dispatcher.pick(now)
            if choice is None:
                return
            model, size = choice
            batch_id = self.next_id
            self.next_id += 1
            self.ledger.dispatched(batch_id, free[0], self.device.now() - self.t0)
            self.device.submit(free[0], BatchJob(batch_id, model, size), self.events.put)

    def _wait(self, timeout: float) -> None:
        try:
            result = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        self._finish(result)
        while True:  # several batches may have ended together
            try:
                self._finish(self.events.get_nowait())
            except queue.Empty:
                return

    def _finish(self, result: BatchResult) -> None:
        record = self.ledger.finish(result)
        if result.error:
            self.failure = (
                self.failure or f"{result.model} batch {result.batch_size}: {result.error}"
            )
            return
        self.done.append(record)
