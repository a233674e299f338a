"""The predictor family: a co-location view (features) times a regressor.

    solo         no interference: latency = solo latency
    coarse       co-runners present at start, least squares fitted once (gpulet form)
    ewma         EWMA over time of the device's load before start, fitted once
    fine         time-weighted co-runner features over the batch's lifetime, fitted once
    fine-sgd     fine, updated online after every batch (normalised LMS)
    fine-rls     fine, updated online by recursive least squares with forgetting
    fine-x       fine with interaction terms (self x co-runner) and the squared
                 co-runner count, fitted once
    fine-rls-x   fine-x updated online by RLS
    fine-rls-m   fine-rls plus a per-model interference sensitivity learnt online
                 (what the profile features miss about how much a model suffers)
    fine-rls-xm  both: interactions and per-model sensitivity

On a CPU every view's co-load also carries the oversubscription of the cores (see
predlat.predict.features; option oversub=False leaves it out).

Any "<coarse|ewma|fine>[-sgd|-rls][-x|-m|-xm]" is accepted (e.g. "coarse-rls" to separate
the effect of adapting from that of the fine timeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from predlat.errors import ConfigError
from predlat.predict.base import BasePredictor, clip_slowdown
from predlat.predict.features import (
    Design,
    EwmaHistory,
    Vector,
    coarse_load,
    ewma_loads,
    fine_load,
)
from predlat.predict.regressors import RLS, SGD, LinearRegressor, Ridge
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

PREDICTOR_NAMES: tuple[str, ...] = (
    "solo",
    "coarse",
    "ewma",
    "fine",
    "fine-sgd",
    "fine-rls",
    "fine-x",
    "fine-rls-x",
    "fine-rls-m",
    "fine-rls-xm",
)

_EXTRACTORS = ("coarse", "ewma", "fine")
_REGRESSORS = ("static", "sgd", "rls")
_OPTIONS = {
    "tau",
    "lam",
    "delta",
    "lr",
    "sgd_method",
    "alpha",
    "window",
    "default_margin",
    "calibrate_forecast",
    "model_lam",
    "oversub",
    "huber",
}


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
    """slowdown = w . row(self features, co-load); latency = solo x slowdown."""

    def __init__(
        self,
        profile: Profile,
        *,
        name: str,
        extractor: str = "fine",
        regressor: str = "static",
        interactions: bool = False,
        squares: bool | None = None,
        tau: float | None = None,
        lam: float = 0.99,
        delta: float = 100.0,
        lr: float = 0.2,
        sgd_method: str = "nlms",
        alpha: float = 1e-6,
        window: int = 256,
        default_margin: float = 0.25,
        calibrate_forecast: bool = True,
        per_model: bool = False,
        model_lam: float = 0.98,
        oversub: bool = True,
        huber: float = 0.0,
    ):
        super().__init__(profile, window=window, default_margin=default_margin, oversub=oversub)
        if extractor not in _EXTRACTORS:
            raise ConfigError(f"unknown feature extractor {extractor!r} ({', '.join(_EXTRACTORS)})")
        if regressor not in _REGRESSORS:
            raise ConfigError(f"unknown regressor {regressor!r} ({', '.join(_REGRESSORS)})")
        self.name = name
        self.kind = extractor
        # The squared count needs the timeline, so only the fine view carries it.
        self.squares = bool(interactions if squares is None else squares) and extractor == "fine"
        has_ov = self.fmap.oversub is not None
        n_load = 3 + has_ov + self.squares
        self.design = Design(n_load, interactions, oversub=has_ov)
        self.tau = float(tau) if tau is not None else _default_tau(profile)
        if self.tau <= 0:
            raise ConfigError(f"tau must be positive, got {self.tau}")
        self.history = EwmaHistory(self.fmap, self.tau) if extractor == "ewma" else None
        self.regressor = _make_regressor(
            regressor, self.design.dim, lam, delta, lr, sgd_method, alpha, huber
        )
        self.online = self.regressor.online
        self.calibrate_forecast = calibrate_forecast
        self._parts: dict[tuple[str, int], tuple[int, float, Vector, float]] = {}
        # Per-model interference sensitivity: slowdown = a + c_model * beta . co_load, with
        # c_model (prior 1) tracked by a scalar RLS. It absorbs what the profile features
        # miss about how strongly one model suffers from co-runners.
        self.per_model = per_model
        self.model_lam = model_lam
        self._sens: dict[str, list[float]] = {}

    # -- features ----------------------------------------------------------------------
    def co_load(self, record: BatchRecord) -> Vector:
        if self.kind == "fine":
            return fine_load(record, self.fmap, self.squares)
        if self.kind == "coarse":
            return coarse_load(record, self.fmap)
        return self.history.value(record)

    def row(self, record: BatchRecord, load: Vector | None = None) -> list[float]:
        """The regression row; with per-model sensitivity, the co-load is scaled by the
        model's sensitivity (so the row stays linear in it)."""
        s = self.fmap.self_vec(record.model, record.batch_size)
        g = self.co_load(record) if load is None else load
        if self.per_model:
            c = self.sensitivity(record.model)
            if c != 1.0:
                g = tuple(c * v for v in g)
        return self.design.row(s, g)

    # -- predicting --------------------------------------------------------------------
    def slowdown(self, record: BatchRecord) -> float:
        return clip_slowdown(self.regressor.predict_one(self.row(record)))

    def sensitivity(self, model: str) -> float:
        """The model's interference sensitivity relative to the global model (1 unless
        per-model sensitivity is on)."""
        return self._sens[model][0] if model in self._sens else 1.0

    def slowdown_parts(self, model: str, batch_size: int) -> tuple[float, Vector]:
        key = (model, batch_size)
        version = self.regressor.version
        c = self.sensitivity(model)
        hit = self._parts.get(key)
        if hit is not None and hit[0] == version and hit[3] == c:
            return hit[1], hit[2]
        a, beta = self.design.parts(self.regressor.coef, self.fmap.self_vec(model, batch_size))
        if c != 1.0:
            beta = tuple(c * b for b in beta)
        self._parts[key] = (version, a, beta, c)
        return a, beta

    def _learn_sensitivity(self, model: str, batch_size: int, g: Vector, y: float) -> None:
        """Scalar RLS on y - a = c (beta . co_load), with the global model's a and beta."""
        a, beta = self.design.parts(self.regressor.coef, self.fmap.self_vec(model, batch_size))
        z = sum(b * v for b, v in zip(beta, g, strict=True))
        state = self._sens.setdefault(model, [1.0, 1.0])
        c, p = state
        lam = self.model_lam
        gain = p * z / (lam + z * p * z)
        state[0] = c + gain * (y - a - c * z)
        state[1] = min(1.0, (p - gain * z * p) / lam)  # never less certain than the prior

    # -- learning ----------------------------------------------------------------------
    def _fit_model(self, records: Sequence[BatchRecord]) -> None:
        usable = [r for r in records if r.latency > 0]
        if self.kind == "ewma":
            ewma = ewma_loads(usable, self.fmap, self.tau)
            loads = [ewma[r.batch_id] for r in usable]
            self.history.clear()
            for r in sorted(usable, key=lambda r: r.end):
                self.history.add(r)
        else:
            loads = [self.co_load(r) for r in usable]
        y = [r.latency / self.fmap.solo(r.model, r.batch_size) for r in usable]
        self._sens.clear()
        if not usable:
            return
        # Alternate: global model with the current sensitivities, then sensitivities
        # against the global model (a few rounds suffice; one without per-model terms).
        for _ in range(3 if self.per_model else 1):
            X = [self.row(r, g) for r, g in zip(usable, loads, strict=True)]
            self.regressor.fit(X, y)
            if not self.per_model:
                break
            self._sens.clear()
            for r, g, target in zip(usable, loads, y, strict=True):
                self._learn_sensitivity(r.model, r.batch_size, g, target)

    def fit(self, records: Sequence[BatchRecord]) -> LinearPredictor:
        super().fit(records)
        if self.calibrate_forecast:
            _calibrate_forecast(self, records)
        return self

    def learn_one(self, record: BatchRecord) -> None:
        if record.latency <= 0:
            return
        self.version += 1
        solo = self.fmap.solo(record.model, record.batch_size)
        g = self.co_load(record)
        x = self.row(record, g)
        y = record.latency / solo
        predicted = solo * clip_slowdown(self.regressor.predict_one(x))
        self.calibrator.add(record.latency / predicted - 1.0)
        if self.online:
            if self.per_model:
                self._learn_sensitivity(record.model, record.batch_size, g, y)
                x = self.row(record, g)
            self.regressor.learn_one(x, y)
        if self.history is not None:
            self.history.add(record)


def _calibrate_forecast(predictor: BasePredictor, records: Sequence[BatchRecord]) -> None:
    # Deferred import: forecast mode builds on the predictors, not the other way round.
    from predlat.predict.forecast import replay_forecasters

    pairs, forecasters = replay_forecasters(predictor, records, learn=False)
    residuals = [
        rec.latency / (end.mean - rec.start) - 1.0
        for rec, end in pairs
        if end.mean > rec.start and rec.latency > 0
    ]
    predictor.forecast_residuals = residuals[-predictor.calibrator.window :]
    if forecasters:
        gains = [fc.fill_gain for fc in forecasters.values()]
        fill = next(iter(forecasters.values())).fill or "none"
        predictor.forecast_state = {"fill": fill, "fill_gain": sum(gains) / len(gains)}


def _make_regressor(
    kind: str,
    dim: int,
    lam: float,
    delta: float,
    lr: float,
    sgd_method: str,
    alpha: float,
    huber: float,
) -> LinearRegressor:
    try:
        if kind == "rls":
            return RLS(dim, lam=lam, delta=delta, alpha=alpha, huber=huber)
        if kind == "sgd":
            return SGD(dim, lr=lr, method=sgd_method, alpha=alpha)
        return Ridge(dim, alpha=alpha)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _default_tau(profile: Profile) -> float:
    """A few typical batch latencies: long enough to smooth, short enough to follow load."""
    solos = sorted(
        profile.solo_latency(m, n) for m in profile.models for n in profile.batch_sizes(m)
    )
    return 4.0 * solos[len(solos) // 2] if solos else 0.05


def parse_name(name: str) -> dict[str, Any]:
    """'fine-rls-xm' -> {extractor: fine, regressor: rls, interactions: True,
    per_model: True}."""
    parts = name.split("-")
    spec: dict[str, Any] = {
        "extractor": parts[0],
        "regressor": "static",
        "interactions": False,
        "per_model": False,
    }
    rest = parts[1:]
    if rest and rest[-1] in ("x", "m", "xm"):
        spec["interactions"] = "x" in rest[-1]
        spec["per_model"] = "m" in rest[-1]
        rest = rest[:-1]
    if rest and rest[0] in ("sgd", "rls"):
        spec["regressor"] = rest[0]
        rest = rest[1:]
    if parts[0] not in _EXTRACTORS or rest:
        raise ConfigError(
            f"unknown predictor {name!r}; choose one of {', '.join(PREDICTOR_NAMES)} "
            "(or <coarse|ewma|fine>[-sgd|-rls][-x|-m|-xm])"
        )
    return spec


def make_predictor(name: str, profile: Profile, **options: Any) -> BasePredictor:
    """Build a predictor by name (see PREDICTOR_NAMES). Options: tau (EWMA time constant,
    s), lam (RLS forgetting factor), delta (RLS initial P scale), lr and sgd_method (SGD),
    alpha (ridge penalty), window and default_margin (quantile calibration),
    calibrate_forecast (replay the training data in forecast mode to calibrate forecast
    quantiles; default True), model_lam (forgetting of the per-model sensitivity),
    oversub (add the CPU oversubscription channel to the co-load; default True, absent on
    accelerators), huber (RLS: clip innovations past this many running medians of |innovation|; 0,
    the default: off)."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(
            f"unknown predictor option(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_OPTIONS))})"
        )
    if name == "solo":
        kw = {
            k: options[k]
            for k in ("window", "default_margin", "calibrate_forecast", "oversub")
            if k in options
        }
        return SoloPredictor(profile, **kw)
    return LinearPredictor(profile, name=name, **parse_name(name), **options)
