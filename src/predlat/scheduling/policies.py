"""Scheduling policies: the same scheduler, different beliefs about latency.

A policy is a small strategy object: how many batches may run at once, which predictor
forecasts their ends, and whether deadlines are checked against the mean forecast or a
quantile of it. The scheduler asks the policy; it never branches on a policy's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from predlat.errors import ConfigError
from predlat.predict.forecast import ForecastEnd, Forecaster
from predlat.predict.predictors import make_predictor
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


@dataclass(frozen=True)
class Policy:
    name: str
    predictor: str  # a name `predlat.predict.make_predictor` accepts
    use_quantile: bool  # check high-priority deadlines against the forecast quantile
    quantile_for_low: bool  # ... and low-priority ones too (else their mean)
    one_at_a_time: bool  # never co-locate: one batch owns the whole device
    summary: str

    def running_limit(self, num_slots: int) -> int:
        """How many batches may run at once on a device with `num_slots` slots."""
        return 1 if self.one_at_a_time else num_slots

    def end(self, forecast: ForecastEnd, high: bool = True) -> float:
        """The end time the policy plans with, for a batch with (`high`) or without
        high-priority requests."""
        if self.use_quantile and (high or self.quantile_for_low):
            return forecast.quantile
        return forecast.mean

    def make_forecaster(
        self,
        profile: Profile,
        quantile: float = 0.95,
        training: Sequence[BatchRecord] = (),
        **options: object,
    ) -> Forecaster:
        """A fresh forecaster for one device, its predictor fitted on `training` (finished
        batches with timelines) or, without any, on the solo prior (every batch as long
        as its solo latency) so that it starts interference-blind rather than unfitted.
        Online predictors keep learning from every completion."""
        predictor = make_predictor(self.predictor, profile)
        predictor = predictor.fit(list(training) or solo_prior(profile))
        return Forecaster(predictor, profile, quantile=quantile, **options)


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
            use_quantile=False,
            quantile_for_low=False,
            one_at_a_time=True,
            summary="one batch at a time with the whole device, solo latency (Clockwork)",
        ),
        Policy(
            "oblivious",
            predictor="solo",
            use_quantile=False,
            quantile_for_low=False,
            one_at_a_time=False,
            summary="co-locate on every slot, EDF, solo latency (interference-blind)",
        ),
        Policy(
            "coarse",
            predictor="coarse",
            use_quantile=False,
            quantile_for_low=False,
            one_at_a_time=False,
            summary="co-locate, static predictor of co-runners at start (gpulet)",
        ),
        Policy(
            "predlat",
            predictor="fine-rls",
            use_quantile=True,
            quantile_for_low=True,
            one_at_a_time=False,
            summary="co-locate, fine-grained online predictor at a quantile (ours)",
        ),
    )
}

POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown policy '{name}' (choose {', '.join(POLICY_NAMES)})") from None
