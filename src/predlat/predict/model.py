"""`LatencyModel`: the library's front door, in the shape of an online learner.

One model per device. Tell it when batches start and end; it keeps their co-location
timelines itself (so what it learns from is what it forecasts with), forecasts the
latency of a candidate batch started now beside the running ones, and learns from
every finished batch:

    model = LatencyModel(profile, "fine-rls").fit(history)
    model.observe_start(RunningBatch(1, "resnet", 4, start=0.0))
    model.predict_one(RunningBatch(2, "bert", 2, start=0.01), now=0.01)  # mean, quantile
    done = model.observe_end(1, end=0.012)  # a BatchRecord with its timeline
    model.learn_one(done)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predlat.errors import ConfigError
from predlat.predict.base import BasePredictor, SlowdownModel
from predlat.predict.forecast import Forecaster, RunningBatch
from predlat.predict.persist import load_predictor, save_predictor
from predlat.predict.predictors import make_predictor
from predlat.predict.timeline import TimelineTracker
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


@dataclass(frozen=True)
class LatencyForecast:
    mean: float  # forecast latency (s)
    quantile: float  # forecast latency at the model's quantile (s, >= mean)


class LatencyModel:
    """Latency of batches on one device under co-location (see the module doc).
    `predictor` is a registered name (predlat.predict.PREDICTORS) or an object that
    implements `SlowdownModel`; `options` go to the named predictor."""

    def __init__(
        self,
        profile: Profile,
        predictor: str | SlowdownModel = "fine-rls",
        *,
        quantile: float = 0.95,
        device: int = 0,
        **options: Any,
    ):
        if isinstance(predictor, str):
            predictor = make_predictor(predictor, profile, **options)
        elif options:
            raise ConfigError("predictor options go with a predictor name, not an object")
        self.profile = profile
        self.predictor = predictor
        self.quantile = quantile
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self._forecaster = Forecaster(self.predictor, self.profile, self.quantile)
        self._timeline = TimelineTracker()
        self._running: dict[int, RunningBatch] = {}
        self._predicted: dict[int, float | None] = {}

    def fit(self, records: Sequence[BatchRecord]) -> LatencyModel:
        """Fit the predictor on finished batches (with timelines) and start afresh."""
        fit = getattr(self.predictor, "fit", None)
        if fit is None:
            raise ConfigError(f"predictor {self.predictor!r} cannot be fitted (no fit)")
        fit(records)
        self._reset()
        return self

    # -- events ------------------------------------------------------------------------
    def observe_start(self, batch: RunningBatch) -> None:
        if batch.batch_id in self._running:
            raise ConfigError(f"batch {batch.batch_id} has already started")
        self._forecaster.on_dispatch(batch)
        self._timeline.started(batch.batch_id, batch.model, batch.batch_size, batch.start)
        self._running[batch.batch_id] = batch

    def observe_end(self, batch_id: int, end: float, slot: int = 0) -> BatchRecord:
        """The batch ended at `end`: its record, timeline attached (for `learn_one`)."""
        batch = self._running.pop(batch_id, None)
        if batch is None:
            raise ConfigError(f"batch {batch_id} was never started (observe_start)")
        if end < batch.start:
            raise ConfigError(f"batch {batch_id} ends at {end} before its start {batch.start}")
        record = BatchRecord(
            batch_id,
            batch.model,
            batch.batch_size,
            slot,
            batch.start,
            batch.start,
            end,
            device=self.device,
        )
        record = self._timeline.finished(record)
        self._predicted[batch_id] = self._forecaster.release(record)
        return record

    def running(self) -> list[RunningBatch]:
        return list(self._running.values())

    # -- predicting and learning -------------------------------------------------------
    def predict_one(self, candidate: RunningBatch, now: float) -> LatencyForecast:
        """Latency of `candidate` if it started at `now` beside the running batches."""
        batch = RunningBatch(candidate.batch_id, candidate.model, candidate.batch_size, now)
        end = self._forecaster.forecast(now, (batch,))[batch.batch_id]
        return LatencyForecast(end.mean - now, end.quantile - now)

    def learn_one(self, finished: BatchRecord) -> None:
        """Learn from a batch `observe_end` returned (forecast residual, recent load and
        the predictor's own update)."""
        predicted = self._predicted.pop(finished.batch_id, None)
        self._forecaster.learn(finished, predicted)

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor (predlat's own predictor classes only)."""
        if not isinstance(self.predictor, BasePredictor):
            raise ConfigError(f"only predlat's predictors can be saved, not {self.predictor!r}")
        return save_predictor(self.predictor, self.profile, path)

    @classmethod
    def load(cls, path: str | Path, profile: Profile, **kw: Any) -> LatencyModel:
        return cls(profile, load_predictor(path, profile), **kw)
