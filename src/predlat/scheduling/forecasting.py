"""What the scheduler needs from a forecaster, and a fixed one for exact tests and
simulations.

The scheduler talks to `predlat.predict.forecast.Forecaster`; anything with the same
methods works (`ForecasterLike`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from predlat.predict.forecast import ForecastEnd, RunningBatch
from predlat.traces.records import BatchRecord


class ForecasterLike(Protocol):
    def on_dispatch(self, batch: RunningBatch, predicted_latency: float | None = None) -> None: ...

    def release(self, record: BatchRecord) -> float | None: ...

    def learn(self, record: BatchRecord, predicted: float | None = None) -> None: ...

    def forecast(
        self, now: float, candidates: Sequence[RunningBatch] = ()
    ) -> dict[int, ForecastEnd]: ...


class FixedSlowdownForecaster:
    """A deterministic forecaster with a known law: a batch of solo latency S beside c
    co-runners takes S * (1 + slowdown * c); ends are forecast from the co-runner count
    now (running batches plus candidates), and the quantile is `quantile_factor` times
    the mean latency. It learns nothing: exact expectations for tests, and a stand-in
    predictor for simulations."""

    def __init__(
        self,
        solo: Callable[[str, int], float],
        slowdown: float = 0.0,
        quantile_factor: float = 1.0,
    ) -> None:
        self._solo = solo
        self.slowdown = slowdown
        self.quantile_factor = quantile_factor
        self._running: dict[int, RunningBatch] = {}
        self.completed: list[BatchRecord] = []

    def on_dispatch(self, batch: RunningBatch, predicted_latency: float | None = None) -> None:
        self._running[batch.batch_id] = batch

    def on_complete(self, record: BatchRecord) -> None:
        self.learn(record, self.release(record))

    def release(self, record: BatchRecord) -> float | None:
        self._running.pop(record.batch_id, None)
        return None

    def learn(self, record: BatchRecord, predicted: float | None = None) -> None:
        self.completed.append(record)

    def running(self) -> list[RunningBatch]:
        return list(self._running.values())

    def forecast(
        self, now: float, candidates: Sequence[RunningBatch] = ()
    ) -> dict[int, ForecastEnd]:
        batches = [*self._running.values(), *candidates]
        factor = 1.0 + self.slowdown * (len(batches) - 1)
        out: dict[int, ForecastEnd] = {}
        for b in batches:
            latency = self._solo(b.model, b.batch_size) * factor
            out[b.batch_id] = ForecastEnd(
                b.start + latency, b.start + latency * self.quantile_factor
            )
        return out
