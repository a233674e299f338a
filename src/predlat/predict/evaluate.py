"""Evaluating predictors on a trace, in posterior and forecast mode, never from the future."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predlat.predict.base import BasePredictor, Predictor
from predlat.predict.replay import replay
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

SUMMARY_KEYS = ("n", "mean_rel_err", "p50", "p95", "p99", "under_frac", "q95_exceed_frac")


@dataclass(frozen=True)
class Prediction:
    batch_id: int
    model: str
    batch_size: int
    actual: float  # latency (s)
    predicted: float  # predicted latency (s)
    predicted_q: float  # predicted latency at the quantile (s)
    time: float  # when the prediction applies: the batch's start (s)

    @classmethod
    def of(cls, record: BatchRecord, predicted: float, predicted_q: float) -> Prediction:
        """A prediction for a finished batch; the quantile is never below the mean."""
        return cls(
            record.batch_id,
            record.model,
            record.batch_size,
            record.latency,
            predicted,
            max(predicted, predicted_q),
            record.start,
        )

    @property
    def rel_err(self) -> float:
        return abs(self.predicted - self.actual) / self.actual


def evaluate_posterior(
    predictor: Predictor, test_records: Sequence[BatchRecord], quantile: float = 0.95
) -> list[Prediction]:
    """Each batch predicted from its real timeline, in completion order, before the
    predictor learns from it (online predictors keep learning; static ones only update
    their history and calibration)."""
    out = []
    for rec in sorted(test_records, key=lambda r: (r.end, r.batch_id)):
        if rec.latency <= 0:
            continue
        out.append(
            Prediction.of(rec, predictor.predict(rec), predictor.predict_quantile(rec, quantile))
        )
        predictor.learn_one(rec)
    return out


def evaluate_forecast(
    predictor: BasePredictor,
    profile: Profile,
    test_records: Sequence[BatchRecord],
    quantile: float = 0.95,
    **forecaster_options,
) -> list[Prediction]:
    """Replay the trace's dispatch and completion events through one Forecaster per
    device; each batch gets the forecast made at its start, and online predictors learn
    from each completion as it happens. Predictions come in start order."""
    out = []
    ends = replay(
        predictor, test_records, quantile, profile=profile, learn=True, **forecaster_options
    )
    for rec, end in ends:
        out.append(Prediction.of(rec, end.mean - rec.start, end.quantile - rec.start))
    return out


def error_summary(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Relative errors |predicted - actual| / actual: mean and percentiles; fraction
    predicted below actual; fraction of actual latencies above the quantile prediction.
    With no predictions, n = 0 and every other value is NaN."""
    if not predictions:
        return {k: (0 if k == "n" else math.nan) for k in SUMMARY_KEYS}
    actual = np.array([p.actual for p in predictions])
    predicted = np.array([p.predicted for p in predictions])
    predicted_q = np.array([p.predicted_q for p in predictions])
    rel = np.abs(predicted - actual) / actual
    p50, p95, p99 = np.percentile(rel, [50, 95, 99])
    return {
        "n": len(predictions),
        "mean_rel_err": float(rel.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "under_frac": float(np.mean(predicted < actual)),
        "q95_exceed_frac": float(np.mean(actual > predicted_q)),
    }
