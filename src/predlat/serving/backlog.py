"""The door's forecast of when a new request would be answered, from state it can read
cheaply before the body: the requests it let in and not yet answered (per model and
priority), the scheduler's running batches (their forecast ends), the profile's solo
latencies, and the slowdown recent batches showed.

The work ahead of a new request (everything waiting at its priority or higher, in
batches of the size the scheduler has lately been picking per model, at most
`max_batch`; its own model's batches before its own) is laid on the slots as they free
up (list scheduling); its own batch then runs. The raw forecast is
then calibrated online: the door learns, from every request it let in, how the real
time to its answer compared with the forecast, and scales forecasts by a high quantile
of that ratio. So a request is refused at the door when it would most likely be late,
and the requests let in are, at that quantile, answered on time, whatever the raw
forecast misses (the response path, co-location, the batch sizes the scheduler picks).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from predlat.errors import ConfigError
from predlat.scheduling.config import RunningInfo
from predlat.scheduling.request import Priority
from predlat.traces.records import BatchRecord

Waiting = Mapping[tuple[str, Priority], int]  # rows let in and not yet answered
SLOWDOWN_WEIGHT = 0.1  # EWMA weight of the newest batch's log-slowdown
MAX_BATCHES = 256  # batches laid on slots one by one; the rest is spread evenly


@dataclass
class OnlineQuantile:
    """A quantile of the last `window` samples, recomputed every `every` samples (a
    percentile per sample would cost more than the request it judges)."""

    quantile: float = 0.99
    window: int = 256
    every: int = 16
    initial: float = 1.0
    min_samples: int = 32
    value: float = field(init=False)
    _samples: collections.deque[float] = field(init=False, repr=False)
    _since: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"quantile must be in (0, 1), got {self.quantile}")
        self.value = self.initial
        self._samples = collections.deque(maxlen=self.window)

    def add(self, sample: float) -> None:
        self._samples.append(sample)
        self._since += 1
        if self._since >= self.every and len(self._samples) >= self.min_samples:
            self._since = 0
            self.value = float(np.quantile(np.fromiter(self._samples, float), self.quantile))

    def __len__(self) -> int:
        return len(self._samples)


class LoopLag:
    """How late the event loop runs a timer (p99 of recent ticks): about how long a
    request's bytes wait before its handler starts, which the handler's clock cannot see.
    The door adds it to its forecasts (a busy loop makes every answer that much later)."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.lag = OnlineQuantile(0.99, initial=0.0)
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def value(self) -> float:
        return self.lag.value

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.perf_counter() + self.period_s
        self._handle = loop.call_later(self.period_s, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # Loops time in whole milliseconds: a millisecond late is no lag.
        self.lag.add(max(0.0, time.perf_counter() - self._due - 1e-3))
        self.start(loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class BacklogForecast:
    """`forecast(model, priority, waiting)`: seconds until a new one-row request would be
    answered (calibrated), or None when it cannot tell. Reads `running()` (the
    scheduler's running batches) and `now()` (the runtime's clock) from the thread that
    calls it; both are cheap snapshots."""

    def __init__(
        self,
        solo_latency: Callable[[str, int], float],
        running: Callable[[], Sequence[RunningInfo]],
        now: Callable[[], float],
        slots: int,
        max_batch: int,
        quantile: float = 0.99,
        ratio_bounds: tuple[float, float] = (0.5, 20.0),
    ) -> None:
        if slots < 1 or max_batch < 1:
            raise ConfigError(f"slots and max_batch must be >= 1, got {slots}, {max_batch}")
        self._solo = solo_latency
        self._running = running
        self._now = now
        self.slots = slots
        self.max_batch = max_batch
        self.log_slowdown: dict[str, float] = {}
        self.batch_rows: dict[str, float] = {}  # per model, recent batches (EWMA)
        self.ratio = OnlineQuantile(quantile)
        self.ratio_bounds = ratio_bounds
        self._solo_cache: dict[tuple[str, int], float] = {}

    # -- learning ------------------------------------------------------------------------
    def on_batch(self, record: BatchRecord, predicted: float | None = None) -> None:
        """A finished batch (a runtime batch listener): its observed slowdown."""
        solo = self._solo_s(record.model, record.batch_size)
        latency = record.end - record.start
        if solo <= 0 or latency <= 0:
            return
        sample = math.log(max(latency / solo, 1.0))
        last = self.log_slowdown.get(record.model, sample)
        self.log_slowdown[record.model] = last + SLOWDOWN_WEIGHT * (sample - last)
        rows = self.batch_rows.get(record.model, record.batch_size)
        self.batch_rows[record.model] = rows + SLOWDOWN_WEIGHT * (record.batch_size - rows)

    def observe(self, forecast_s: float, actual_s: float) -> None:
        """A request let in with raw forecast `forecast_s` was answered `actual_s` after
        arrival (or, refused late, at least that)."""
        if forecast_s > 0 and actual_s >= 0:
            self.ratio.add(actual_s / forecast_s)

    @property
    def scale(self) -> float:
        lo, hi = self.ratio_bounds
        return min(hi, max(lo, self.ratio.value))

    # -- forecasting ---------------------------------------------------------------------
    def __call__(self, model: str, priority: Priority, waiting: Waiting) -> float | None:
        raw = self.raw(model, priority, waiting)
        return None if raw is None else raw * self.scale

    def raw(self, model: str, priority: Priority, waiting: Waiting) -> float | None:
        try:
            running = list(self._running())
            now = self._now()
            rows = _rows_ahead(priority, waiting, running)
            mine = max(0, rows.pop(model, 0)) + 1
            size = self._batch(model)
            full, last = divmod(mine - 1, size)
            ahead = [self._work(model, size)] * full
            for other, n in rows.items():
                ahead += self._batches(other, n)
            free = [max(0.0, r.predicted_mean_end - now) for r in running]
            start = _list_schedule(free, ahead, self.slots)
            return start + self._work(model, last + 1)
        except Exception:  # a forecast must never fail a request: no opinion then
            return None

    def nothing_ahead(self, priority: Priority, waiting: Waiting) -> bool:
        """No request let in waits at `priority` or higher (running ones count)."""
        return not any(n > 0 and level <= priority for (_, level), n in waiting.items())

    def _batches(self, model: str, rows: int) -> list[float]:
        if rows <= 0:
            return []
        size = self._batch(model)
        full, rest = divmod(rows, size)
        out = [self._work(model, size)] * full
        return [*out, self._work(model, rest)] if rest else out

    def _batch(self, model: str) -> int:
        """The batch size the scheduler has been picking for `model` lately (it packs
        the queue into the batches that meet deadlines, rarely into full ones)."""
        rows = self.batch_rows.get(model, self.max_batch)
        return min(self.max_batch, max(1, round(rows)))

    def _work(self, model: str, rows: int) -> float:
        return self._solo_s(model, rows) * math.exp(self.log_slowdown.get(model, 0.0))

    def _solo_s(self, model: str, rows: int) -> float:
        key = (model, rows)
        solo = self._solo_cache.get(key)
        if solo is None:
            solo = self._solo_cache[key] = float(self._solo(model, rows))
        return solo


def _rows_ahead(
    priority: Priority, waiting: Waiting, running: Sequence[RunningInfo]
) -> dict[str, int]:
    """Requests waiting at `priority` or higher per model, those running taken out (the
    door counts requests before their body, as one row each)."""
    rows: dict[str, int] = {}
    for (model, level), n in waiting.items():
        if level <= priority and n > 0:
            rows[model] = rows.get(model, 0) + n
    for batch in running:
        for r in batch.requests:
            if r.priority <= priority and r.model in rows:
                rows[r.model] -= 1
    return rows


def _list_schedule(busy: list[float], work: list[float], slots: int) -> float:
    """When a slot is free for one more batch, `work` (batch durations) started first
    on whichever slot frees soonest; `busy`: running batches' remaining times."""
    free = sorted(busy)[:slots] + [0.0] * max(0, slots - len(busy))
    heapq.heapify(free)
    spread = sum(work[MAX_BATCHES:]) / slots
    for d in work[:MAX_BATCHES]:
        heapq.heappush(free, heapq.heappop(free) + d)
    return free[0] + spread
