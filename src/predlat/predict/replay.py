"""Forecast mode over recorded batches: replay their start and end events through one
forecaster per device, as a dispatcher would have seen them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from predlat.predict.base import BasePredictor, ForecastPrior
from predlat.predict.forecast import ForecastEnd, Forecaster, RunningBatch
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


def replay(
    predictor: BasePredictor,
    records: Iterable[BatchRecord],
    quantile: float = 0.95,
    *,
    profile: Profile | None = None,
    learn: bool = True,
    **options,
) -> list[tuple[BatchRecord, ForecastEnd]]:
    """Replay finished batches' dispatch and completion events in time order through one
    forecaster per device; return each batch with the forecast made at its start.
    Completions at the same instant come before dispatches (a freed slot is refilled)."""
    return replay_forecasters(
        predictor, records, quantile, profile=profile, learn=learn, **options
    )[0]


def replay_forecasters(
    predictor: BasePredictor,
    records: Iterable[BatchRecord],
    quantile: float = 0.95,
    *,
    profile: Profile | None = None,
    learn: bool = True,
    **options,
) -> tuple[list[tuple[BatchRecord, ForecastEnd]], dict[int, Forecaster]]:
    """`replay`, also returning the forecasters (by device) in their final state."""
    recs = [r for r in records if r.latency > 0]
    events = []
    for r in recs:
        events.append((r.start, 1, r.batch_id, r))
        events.append((r.end, 0, r.batch_id, r))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    forecasters: dict[int, Forecaster] = {}
    out: list[tuple[BatchRecord, ForecastEnd]] = []
    for t, kind, _, rec in events:
        fc = forecasters.get(rec.device)
        if fc is None:
            fc = Forecaster(
                predictor, profile or predictor.profile, quantile, learn=learn, **options
            )
            forecasters[rec.device] = fc
        if kind == 1:
            batch = RunningBatch(rec.batch_id, rec.model, rec.batch_size, t)
            end = fc.forecast(t, (batch,))[rec.batch_id]
            out.append((rec, end))
            fc.on_dispatch(batch, end.mean - t)
        else:
            fc.on_complete(rec)
    return out, forecasters


def calibrate_forecast(
    predictor: BasePredictor, records: Sequence[BatchRecord], **options
) -> ForecastPrior:
    """Replay `records` in forecast mode (without learning): the residuals and fill gain
    new forecasters of `predictor` start from."""
    pairs, forecasters = replay_forecasters(predictor, records, learn=False, **options)
    residuals = [
        rec.latency / (end.mean - rec.start) - 1.0
        for rec, end in pairs
        if end.mean > rec.start and rec.latency > 0
    ]
    prior = ForecastPrior(residuals[-predictor.calibrator.window :])
    if forecasters:
        gains = [fc.fill_gain for fc in forecasters.values()]
        prior.fill = next(iter(forecasters.values())).fill or "none"
        prior.fill_gain = sum(gains) / len(gains)
        corrections = [fc.correction for fc in forecasters.values()]
        prior.correction = sum(corrections) / len(corrections)
    return prior
