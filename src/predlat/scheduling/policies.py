"""Scheduling policies: the same scheduler, different beliefs about latency.

A policy is a small strategy object: how many batches may run at once (and, for
one-at-a-time policies, with how many threads), which predictor forecasts their ends,
and the planning quantile. The quantile is a run-level setting, the same for every
predictive policy (`with_quantile`), so that compared policies differ only in their
predictor. The scheduler asks the policy; it never branches on a policy's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from predlat.errors import ConfigError
from predlat.predict.base import BasePredictor
from predlat.predict.forecast import ForecastEnd, Forecaster
from predlat.predict.predictors import make_predictor
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

DEFAULT_QUANTILE = 0.95
# `serial_threads` of one-at-a-time policies: every usable core, or one thread.
ALL_CORES = 0


@dataclass(frozen=True)
class Policy:
    name: str
    predictor: str  # a name `predlat.predict.make_predictor` accepts
    one_at_a_time: bool  # never co-locate: one batch owns the whole device
    summary: str
    # One-at-a-time policies: intra-op threads of their single slot (ALL_CORES: all).
    serial_threads: int = ALL_CORES
    # The forecast quantile deadlines are checked against; None plans at the mean.
    # Policies whose predictor is `solo` plan at the solo latency whatever it is: a
    # quantile of residuals would make them interference-aware.
    quantile: float | None = DEFAULT_QUANTILE
    # Derived once: `end` is on the scheduler's hot path.
    plans_at_quantile: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plans_at_quantile", self.predictive and self.quantile is not None)

    @property
    def predictive(self) -> bool:
        """Whether the policy's predictor forecasts interference (not just solo)."""
        return self.predictor != "solo"

    def with_quantile(self, quantile: float | None) -> Policy:
        """This policy planning at `quantile` (None: the mean forecast)."""
        if quantile is not None and not 0.0 < quantile < 1.0:
            raise ConfigError(f"quantile must be in (0, 1) or 'mean', got {quantile}")
        return replace(self, quantile=quantile)

    def running_limit(self, num_slots: int) -> int:
        """How many batches may run at once on a device with `num_slots` slots."""
        return 1 if self.one_at_a_time else num_slots

    def end(self, forecast: ForecastEnd, high: bool = True) -> float:
        """The end time the policy plans with (the same for batches with and without
        high-priority requests; `high` is kept for the scheduler's call)."""
        return forecast.quantile if self.plans_at_quantile else forecast.mean

    def make_forecaster(
        self,
        profile: Profile,
        quantile: float | None = None,
        training: Sequence[BatchRecord] = (),
        predictor: BasePredictor | None = None,
        **options: object,
    ) -> Forecaster:
        """A fresh forecaster for one device. Its predictor is `predictor` (already
        fitted, used as is: the caller passes a copy it may mutate) or a new one fitted
        on `training` (finished batches with timelines) or, without any, on the solo
        prior (every batch as long as its solo latency) so that it starts
        interference-blind rather than unfitted. Online predictors keep learning from
        every completion. `quantile`: the forecaster's quantile (default: the policy's,
        or DEFAULT_QUANTILE when it plans at the mean)."""
        if predictor is None:
            predictor = make_predictor(self.predictor, profile)
            predictor = predictor.fit(list(training) or solo_prior(profile))
        elif predictor.name != self.predictor:
            raise ConfigError(
                f"policy '{self.name}' forecasts with '{self.predictor}', not '{predictor.name}'"
            )
        q = quantile if quantile is not None else self.quantile or DEFAULT_QUANTILE
        return Forecaster(predictor, profile, quantile=q, **options)


def solo_prior(profile: Profile) -> list[BatchRecord]:
    """One alone-run record per profiled (model, batch size), at its solo latency."""
    records: list[BatchRecord] = []
    t = 0.0
    for model in profile.models:
        for n in profile.batch_sizes(model):
            latency = profile.solo_latency(model, n)
            records.append(BatchRecord(len(records), model, n, 0, t, t, t + latency))
            t += latency + 1.0  # apart: no overlaps
    return records


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "serial",
            predictor="solo",
            one_at_a_time=True,
            summary="one batch at a time with the whole device (all cores), solo latency "
            "(Clockwork)",
        ),
        Policy(
            "serial-1t",
            predictor="solo",
            one_at_a_time=True,
            serial_threads=1,
            summary="one batch at a time on one thread, solo latency",
        ),
        Policy(
            "oblivious",
            predictor="solo",
            one_at_a_time=False,
            summary="co-locate on every slot, EDF, solo latency (interference-blind)",
        ),
        Policy(
            "coarse",
            predictor="coarse",
            one_at_a_time=False,
            summary="co-locate, static predictor of co-runners at start (gpulet)",
        ),
        Policy(
            "predlat",
            predictor="fine-rls",
            one_at_a_time=False,
            summary="co-locate, fine-grained online predictor (ours)",
        ),
    )
}

POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
# What `predlat compare` runs unless told otherwise.
DEFAULT_COMPARE_POLICIES: tuple[str, ...] = POLICY_NAMES


def get_policy(name: str, quantile: float | None = DEFAULT_QUANTILE) -> Policy:
    """The named policy planning at `quantile` (None: the mean)."""
    try:
        policy = POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown policy '{name}' (choose {', '.join(POLICY_NAMES)})") from None
    return policy if quantile == policy.quantile else policy.with_quantile(quantile)


def parse_quantile(text: str) -> float | None:
    """'mean' -> None, '0.95' -> 0.95 (a user error names what is wrong)."""
    if text.strip().lower() == "mean":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"quantile must be a number in (0, 1) or 'mean', got '{text}'") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"quantile must be in (0, 1) or 'mean', got {value}")
    return value
