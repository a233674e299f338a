"""The interface every latency predictor implements, and the machinery they share.

A predictor maps a batch and its co-location to a latency. It predicts the *slowdown*
(latency / solo latency from the profile) and multiplies by the solo latency, so one model
covers every (model, batch size), including models never seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from predlat.predict.calibration import Calibrator
from predlat.predict.features import FeatureMap
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

# Predicted slowdowns are clipped to this range: a linear model can extrapolate to
# nonsense (negative latency) far outside its training data.
MIN_SLOWDOWN = 0.25
MAX_SLOWDOWN = 100.0


@runtime_checkable
class Predictor(Protocol):
    name: str
    online: bool

    def fit(self, records: Sequence[BatchRecord]) -> Predictor: ...

    def predict(self, record: BatchRecord) -> float: ...

    def predict_quantile(self, record: BatchRecord, q: float = 0.95) -> float: ...

    def learn_one(self, record: BatchRecord) -> None: ...


@runtime_checkable
class SlowdownModel(Protocol):
    """What forecasting needs of a predictor: for a (model, batch size), slowdown =
    a + beta . co_load in its co-location view `kind` ("solo", "coarse", "ewma" or "fine",
    see predlat.predict.features); `version` changes whenever the model does (callers
    cache the parts against it); `learn_one` takes a finished batch with its timeline.
    A class of one's own with these plugs into `Forecaster` and `LatencyModel`."""

    name: str
    kind: str
    version: int

    def slowdown_parts(self, model: str, batch_size: int) -> tuple[float, tuple[float, ...]]: ...

    def learn_one(self, record: BatchRecord) -> None: ...


@dataclass
class ForecastPrior:
    """What replaying the training data in forecast mode taught (see
    `predlat.predict.forecast.calibrate_forecast`): new forecasters start from it."""

    residuals: list[float] = field(default_factory=list)  # relative forecast residuals
    fill: str = ""  # the fill mode the gain was learnt with
    fill_gain: float = 1.0
    correction: float = 1.0  # the median correction at the replay's end (see Forecaster)


class BasePredictor:
    """Shared state: the profile's feature map and a conformal calibrator of relative
    residuals (actual / predicted - 1) for latency quantiles.

    `kind` tells the forecaster which co-location view the predictor uses:
    "solo", "coarse", "ewma" or "fine".
    """

    name: str = "base"
    online: bool = False
    kind: str = "solo"
    tau: float = 0.0  # EWMA time constant (s), for kind "ewma"

    def __init__(
        self,
        profile: Profile,
        *,
        window: int = 256,
        default_margin: float = 0.25,
        oversub: bool = True,
    ):
        self.profile = profile
        # oversub: whether the co-load carries the machine's oversubscription channel.
        self.fmap = FeatureMap(profile, oversub=oversub)
        self.calibrator = Calibrator(window=window, default_margin=default_margin)
        self.forecast_prior = ForecastPrior()
        # Counts changes of the model (fit, learn_one): callers cache what they derive
        # from it (slowdown parts) against it.
        self.version = 0

    # -- what subclasses provide -------------------------------------------------------
    def slowdown(self, record: BatchRecord) -> float:
        raise NotImplementedError

    def slowdown_parts(self, model: str, batch_size: int) -> tuple[float, tuple[float, ...]]:
        """(a, beta): slowdown = a + beta . co_load for this (model, batch size)."""
        raise NotImplementedError

    # -- the Predictor interface -------------------------------------------------------
    def predict(self, record: BatchRecord) -> float:
        return self.fmap.solo(record.model, record.batch_size) * self.slowdown(record)

    def predict_quantile(self, record: BatchRecord, q: float = 0.95) -> float:
        return self.predict(record) * (1.0 + self.calibrator.quantile(q))

    def fit(self, records: Sequence[BatchRecord]) -> BasePredictor:
        self.version += 1
        self._fit_model(records)
        self.calibrator.reset()
        for rec in _usable(records):
            self.calibrator.add(rec.latency / self.predict(rec) - 1.0)
        self.forecast_prior = ForecastPrior()
        return self

    def learn_one(self, record: BatchRecord) -> None:
        if record.latency <= 0:
            return
        self.calibrator.add(record.latency / self.predict(record) - 1.0)
        self.version += 1
        self._learn_model(record)

    def _fit_model(self, records: Sequence[BatchRecord]) -> None:
        return None

    def _learn_model(self, record: BatchRecord) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def clip_slowdown(value: float) -> float:
    return MIN_SLOWDOWN if value < MIN_SLOWDOWN else MAX_SLOWDOWN if value > MAX_SLOWDOWN else value


def _usable(records: Sequence[BatchRecord]) -> list[BatchRecord]:
    return [r for r in records if r.latency > 0]
