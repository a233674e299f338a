"""The predictor family: a co-location view (features) times a regressor.

    solo         no interference: latency = solo latency
    coarse       co-runners present at start, least squares fitted once (gpulet form)
    ewma         EWMA over time of the device's load before start, fitted once
    fine         time-weighted co-runner features over the batch's lifetime, fitted once,
                 with the own x co-runner demand products (`interact`, see Design)
    fine-sgd     fine, updated online after every batch (normalised LMS)
    fine-rls     fine, updated online by recursive least squares with forgetting
                 (option huber: robust to heavy-tailed outliers)

Each is a small class; `PREDICTORS` maps names to them. On a CPU every view's co-load
also carries the oversubscription of the cores (see predlat.predict.features; option
oversub=False leaves it out). The fine family also weighs a co-runner's compute and
memory demand by the batch's own (`interact`, on by default; coarse keeps the gpulet
form without them): on this repository's CPU the products are within noise, on a device
whose contention follows the demands (the simulator's `contended-gpu`,
benchmarks/bench_sim_structure.py) they cut fine-rls's live error and raise its SLO
capacity. Variants with the squared co-runner count or a per-model sensitivity were
within the study's noise of fine-rls and are gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from predlat.errors import ConfigError
from predlat.predict.base import BasePredictor, clip_slowdown
from predlat.predict.colocation import coarse_load, ewma_loads
from predlat.predict.ewma_history import EwmaHistory
from predlat.predict.features import Design, Vector, fine_load
from predlat.predict.regressors import RLS, SGD, LinearRegressor, Ridge
from predlat.predict.replay import calibrate_forecast
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


class SoloPredictor(BasePredictor):
    """Latency = solo latency (what serial, interference-blind schedulers assume)."""

    name = "solo"
    kind = "solo"

    def __init__(self, profile: Profile, *, calibrate_forecast: bool = True, **kw: Any):
        super().__init__(profile, **kw)
        self.calibrate_forecast = calibrate_forecast

    def slowdown(self, record: BatchRecord) -> float:
        return 1.0

    def slowdown_parts(self, model: str, batch_size: int) -> tuple[float, Vector]:
        return 1.0, (0.0, 0.0, 0.0)

    def fit(self, records: Sequence[BatchRecord]) -> SoloPredictor:
        super().fit(records)
        if self.calibrate_forecast:
            _calibrate_forecast(self, records)
        return self


class LinearPredictor(BasePredictor):
    """slowdown = w . [self features, co-load(, interactions)]; latency = solo x
    slowdown. Subclasses choose the co-load (`co_load`, `kind`) and the regressor
    (`make_regressor`); `interact` adds the own x co-runner demand terms (Design)."""

    interact_default = False

    def __init__(
        self,
        profile: Profile,
        *,
        alpha: float = 1e-6,
        window: int = 256,
        default_margin: float = 0.25,
        calibrate_forecast: bool = True,
        oversub: bool = True,
        interact: bool | None = None,
    ):
        super().__init__(profile, window=window, default_margin=default_margin, oversub=oversub)
        has_ov = self.fmap.oversub is not None
        interact = self.interact_default if interact is None else interact
        self.design = Design(3 + has_ov, oversub=has_ov, interact=interact)
        self.alpha = alpha
        try:
            self.regressor = self.make_regressor(self.design.dim)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.online = self.regressor.online
        self.calibrate_forecast = calibrate_forecast
        self._parts: dict[tuple[str, int], tuple[int, float, Vector]] = {}

    def make_regressor(self, dim: int) -> LinearRegressor:
        return Ridge(dim, alpha=self.alpha)

    def co_load(self, record: BatchRecord) -> Vector:
        raise NotImplementedError

    def fit_loads(self, records: Sequence[BatchRecord]) -> list[Vector]:
        """The co-loads of `records` for fitting (all known at once)."""
        return [self.co_load(r) for r in records]

    def row(self, record: BatchRecord, load: Vector | None = None) -> list[float]:
        s = self.fmap.self_vec(record.model, record.batch_size)
        return self.design.row(s, self.co_load(record) if load is None else load)

    # -- predicting --------------------------------------------------------------------
    def slowdown(self, record: BatchRecord) -> float:
        return clip_slowdown(self.regressor.predict_one(self.row(record)))

    def slowdown_parts(self, model: str, batch_size: int) -> tuple[float, Vector]:
        key = (model, batch_size)
        version = self.regressor.version
        hit = self._parts.get(key)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        a, beta = self.design.parts(self.regressor.coef, self.fmap.self_vec(model, batch_size))
        self._parts[key] = (version, a, beta)
        return a, beta

    # -- learning ----------------------------------------------------------------------
    def _fit_model(self, records: Sequence[BatchRecord]) -> None:
        usable = [r for r in records if r.latency > 0]
        loads = self.fit_loads(usable)
        if not usable:
            return
        y = [r.latency / self.fmap.solo(r.model, r.batch_size) for r in usable]
        X = [self.row(r, g) for r, g in zip(usable, loads, strict=True)]
        self.regressor.fit(X, y)

    def fit(self, records: Sequence[BatchRecord]) -> LinearPredictor:
        super().fit(records)
        if self.calibrate_forecast:
            _calibrate_forecast(self, records)
        return self

    @property
    def learns_fine_load(self) -> bool:
        """Whether its co-load of a finished batch is `fine_load` over its feature map,
        so that a caller that computed that already may hand it to `learn_one`."""
        return type(self).co_load is FinePredictor.co_load

    def learn_one(self, record: BatchRecord, load: Vector | None = None) -> None:
        """Learn from a finished batch; `load`, if given, is its co-load (as `co_load`
        computes it), which saves integrating its timeline again."""
        if record.latency <= 0:
            return
        self.version += 1
        solo = self.fmap.solo(record.model, record.batch_size)
        x = self.row(record, load)
        predicted = solo * clip_slowdown(self.regressor.predict_one(x))
        self.calibrator.add(record.latency / predicted - 1.0)
        if self.online:
            self.regressor.learn_one(x, record.latency / solo)


class CoarsePredictor(LinearPredictor):
    """Co-runners present at the batch's start (the gpulet view)."""

    name = kind = "coarse"

    def co_load(self, record: BatchRecord) -> Vector:
        return coarse_load(record, self.fmap)


class EwmaPredictor(LinearPredictor):
    """EWMA (time constant tau, s) of the device's load before the batch's start."""

    name = kind = "ewma"

    def __init__(self, profile: Profile, *, tau: float | None = None, **kw: Any):
        self.tau = float(tau) if tau is not None else _default_tau(profile)
        if self.tau <= 0:
            raise ConfigError(f"tau must be positive, got {self.tau}")
        super().__init__(profile, **kw)
        self.history = EwmaHistory(self.fmap, self.tau)

    def co_load(self, record: BatchRecord) -> Vector:
        return self.history.value(record)

    def fit_loads(self, records: Sequence[BatchRecord]) -> list[Vector]:
        ewma = ewma_loads(records, self.fmap, self.tau)
        self.history.clear()
        for r in sorted(records, key=lambda r: r.end):
            self.history.add(r)
        return [ewma[r.batch_id] for r in records]

    def learn_one(self, record: BatchRecord, load: Vector | None = None) -> None:
        super().learn_one(record, load)
        if record.latency > 0:
            self.history.add(record)


class FinePredictor(LinearPredictor):
    """Time-weighted co-runner features over the batch's own lifetime, fitted once."""

    name = kind = "fine"
    interact_default = True

    def co_load(self, record: BatchRecord) -> Vector:
        return fine_load(record, self.fmap)


class FineSgdPredictor(FinePredictor):
    """fine, updated online after every batch by normalised LMS (step lr)."""

    name = "fine-sgd"

    def __init__(self, profile: Profile, *, lr: float = 0.2, **kw: Any):
        self.lr = lr
        super().__init__(profile, **kw)

    def make_regressor(self, dim: int) -> LinearRegressor:
        return SGD(dim, lr=self.lr, alpha=self.alpha)


class FineRlsPredictor(FinePredictor):
    """fine, updated online by recursive least squares: forgetting factor lam, initial
    uncertainty delta, innovations clipped past huber running medians (0: off), the
    fitted weights kept as a prior of strength `prior` where recent data is weaker
    (see RLS; 0: off)."""

    name = "fine-rls"

    def __init__(
        self,
        profile: Profile,
        *,
        lam: float = 0.99,
        delta: float = 100.0,
        huber: float = 0.0,
        prior: float = 1.0,
        **kw: Any,
    ):
        self.lam, self.delta, self.huber, self.prior = lam, delta, huber, prior
        super().__init__(profile, **kw)

    def make_regressor(self, dim: int) -> LinearRegressor:
        return RLS(
            dim,
            lam=self.lam,
            delta=self.delta,
            alpha=self.alpha,
            huber=self.huber,
            prior=self.prior,
        )


PREDICTORS: dict[str, type] = {
    cls.name: cls
    for cls in (
        SoloPredictor,
        CoarsePredictor,
        EwmaPredictor,
        FinePredictor,
        FineSgdPredictor,
        FineRlsPredictor,
    )
}
PREDICTOR_NAMES: tuple[str, ...] = tuple(PREDICTORS)


def register_predictor(name: str, cls: type) -> None:
    """Make `cls` (called as cls(profile, **options); a `SlowdownModel`) available by
    `name` to make_predictor, LatencyModel and every command that takes a predictor."""
    if name in PREDICTORS and PREDICTORS[name] is not cls:
        raise ConfigError(f"predictor name {name!r} is taken by {PREDICTORS[name].__name__}")
    PREDICTORS[name] = cls


def predictor_class(name: str) -> type:
    try:
        return PREDICTORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown predictor {name!r}; choose one of {', '.join(PREDICTORS)}"
        ) from None


def _calibrate_forecast(predictor: BasePredictor, records: Sequence[BatchRecord]) -> None:
    predictor.forecast_prior = calibrate_forecast(predictor, records)


def _default_tau(profile: Profile) -> float:
    """A few typical batch latencies: long enough to smooth, short enough to follow load."""
    solos = sorted(
        profile.solo_latency(m, n) for m in profile.models for n in profile.batch_sizes(m)
    )
    return 4.0 * solos[len(solos) // 2] if solos else 0.05


def make_predictor(name: str, profile: Profile, **options: Any) -> Any:
    """Build a predictor by name (see PREDICTOR_NAMES). Every predictor takes window and
    default_margin (quantile calibration), calibrate_forecast (replay the training data
    in forecast mode to calibrate forecast quantiles; default True) and oversub (the CPU
    oversubscription channel; default True, absent on accelerators); the linear ones
    alpha (ridge penalty); ewma tau (s); fine-sgd lr; fine-rls lam, delta, huber and
    prior."""
    cls = predictor_class(name)
    try:
        return cls(profile, **options)
    except TypeError as exc:
        raise ConfigError(f"unknown predictor option for {name!r}: {exc}") from None
