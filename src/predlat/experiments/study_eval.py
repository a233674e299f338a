"""Evaluating predictors on a regime's traces: pure, given the records and the profile.

In-distribution: each trace is split chronologically (the first `train_frac` of its
batches by start time to train); every predictor is fitted once on all training parts
pooled, and a copy of that fit is evaluated on each test part, in forecast mode (what a
scheduler sees) and, for the fine predictors, in posterior mode (the real timeline).

Unseen configurations: leave one configuration (trace) out -- fit on the training parts
of all the others, evaluate on the held-out test part -- so the same test batches are
scored as in-distribution, by a predictor that never saw their configuration.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from predlat.predict import Prediction, evaluate_forecast, evaluate_posterior, make_predictor
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord, Overlap

from .rel_errors import REL_ERROR_KEYS, RelErrors, rel_error_figures
from .study_config import EvalConfig
from .study_data import StudyTrace

POSTERIOR_SUFFIX = "-posterior"
STAT_KEYS = (*REL_ERROR_KEYS, "under_frac", "q95_exceed_frac")


@dataclass
class ErrorStats(RelErrors):
    """Relative errors |predicted - actual| / actual of a set of predictions."""

    under_frac: float = math.nan  # predicted faster than it ran
    q95_exceed_frac: float = math.nan  # ran longer than the predicted quantile
    batches: int = 0
    per_model: dict[str, float] = field(default_factory=dict)
    per_k: dict[int, float] = field(default_factory=dict)
    fit_s: float | None = None

    @classmethod
    def of(cls, preds: Sequence[Prediction], ks: Sequence[int] = ()) -> ErrorStats:
        """`ks[i]`: the K of the trace prediction i comes from (optional)."""
        if not preds:
            return cls()
        actual = np.array([p.actual for p in preds])
        rel = np.abs(np.array([p.predicted for p in preds]) - actual) / actual
        return cls(
            **rel_error_figures(rel),
            under_frac=float(np.mean(np.array([p.predicted for p in preds]) < actual)),
            q95_exceed_frac=float(np.mean(actual > np.array([p.predicted_q for p in preds]))),
            batches=len(preds),
            per_model=_mean_by([p.model for p in preds], rel),
            per_k=_mean_by(list(ks), rel) if len(ks) == len(preds) else {},
        )


@dataclass
class RegimeEvaluation:
    """Every predictor on one regime's traces."""

    regime: str
    traces: list[StudyTrace]
    train_batches: int = 0
    test_batches: int = 0
    # per evaluated name (`fine`, `fine-posterior`): predictions by trace index
    predictions: dict[str, dict[int, list[Prediction]]] = field(default_factory=dict)
    predictors: dict[str, ErrorStats] = field(default_factory=dict)
    unseen: dict[str, ErrorStats] = field(default_factory=dict)  # forecast mode, LOCO

    def pooled(self, name: str) -> list[Prediction]:
        return [p for preds in self.predictions[name].values() for p in preds]

    def batches_per_k(self) -> dict[int, int]:
        out: dict[int, int] = {}
        any_name = next(iter(self.predictions), None)
        for index, preds in (self.predictions.get(any_name) or {}).items():
            k = self.traces[index].concurrency
            out[k] = out.get(k, 0) + len(preds)
        return dict(sorted(out.items()))

    def trace_error(self, name: str, index: int) -> float | None:
        preds = self.predictions.get(name, {}).get(index)
        return ErrorStats.of(preds).mean_rel_err if preds else None


def split_chronological(
    records: Sequence[BatchRecord], train_frac: float = 0.75
) -> tuple[list[BatchRecord], list[BatchRecord]]:
    """First `train_frac` of the batches by start time to train, the rest to test."""
    ordered = sorted(records, key=lambda r: (r.start, r.batch_id))
    cut = round(len(ordered) * train_frac)
    return ordered[:cut], ordered[cut:]


def relabel(
    records: Sequence[BatchRecord],
    *,
    id_offset: int = 0,
    time_offset: float = 0.0,
    device: int | None = None,
) -> list[BatchRecord]:
    """Records of one trace made distinct from another's: batch ids (also in timelines)
    shifted, times shifted, and optionally a device index of their own."""

    def overlap(o: Overlap) -> Overlap:
        return o._replace(
            batch_id=o.batch_id + id_offset, start=o.start + time_offset, end=o.end + time_offset
        )

    return [
        replace(
            r,
            batch_id=r.batch_id + id_offset,
            dispatch=r.dispatch + time_offset,
            start=r.start + time_offset,
            end=r.end + time_offset,
            timeline=tuple(overlap(o) for o in r.timeline),
            device=r.device if device is None else device,
        )
        for r in records
    ]


def is_fine(name: str, predictor: object = None) -> bool:
    kind = getattr(predictor, "kind", None)
    return kind == "fine" if kind is not None else name.startswith("fine")


def split_traces(
    traces: Sequence[StudyTrace], train_frac: float
) -> list[tuple[list[BatchRecord], list[BatchRecord]]]:
    """(train, test) per trace, each trace on its own device index with its own ids, so
    histories and forecasters never mix two runs."""
    parts, offset = [], 0
    for index, trace in enumerate(traces):
        records = relabel(trace.records, id_offset=offset, device=index)
        offset += max((r.batch_id for r in trace.records), default=-1) + 1
        parts.append(split_chronological(records, train_frac))
    return parts


def evaluate_regime(
    regime: str,
    traces: Sequence[StudyTrace],
    profile: Profile,
    config: EvalConfig,
    on_step: Callable[[str], None] | None = None,
) -> RegimeEvaluation:
    """In-distribution (forecast and posterior) and unseen-configuration errors."""
    parts = split_traces(traces, config.train_frac)
    result = RegimeEvaluation(regime, list(traces))
    pool = [r for train, _ in parts for r in train]
    result.train_batches = len(pool)
    result.test_batches = sum(len(test) for _, test in parts)
    ks = [t.concurrency for t in traces]
    for name in config.predictors:
        if on_step:
            on_step(f"{regime}: {name}")
        started = time.perf_counter()
        fitted = make_predictor(name, profile).fit(pool)
        fit_s = time.perf_counter() - started
        forecast: dict[int, list[Prediction]] = {}
        posterior: dict[int, list[Prediction]] = {}
        for index, (_, test) in enumerate(parts):
            forecast[index] = evaluate_forecast(
                copy.deepcopy(fitted), profile, test, config.quantile
            )
            if is_fine(name, fitted):
                posterior[index] = evaluate_posterior(copy.deepcopy(fitted), test, config.quantile)
        for key, by_trace in ((name, forecast), (name + POSTERIOR_SUFFIX, posterior)):
            if by_trace:
                result.predictions[key] = by_trace
                result.predictors[key] = _stats(by_trace, ks)
        result.predictors[name].fit_s = fit_s
        result.unseen[name] = _stats(leave_one_out(name, parts, profile, config), ks)
    return result


def leave_one_out(
    name: str,
    parts: Sequence[tuple[list[BatchRecord], list[BatchRecord]]],
    profile: Profile,
    config: EvalConfig,
) -> dict[int, list[Prediction]]:
    """Forecast-mode predictions on each test part by a predictor fitted on the training
    parts of every other trace (none with a single trace: nothing else to fit on)."""
    out: dict[int, list[Prediction]] = {}
    if len(parts) < 2:
        return out
    for held, (_, test) in enumerate(parts):
        pool = [r for i, (train, _) in enumerate(parts) if i != held for r in train]
        fitted = make_predictor(name, profile).fit(pool)
        out[held] = evaluate_forecast(fitted, profile, test, config.quantile)
    return out


def _stats(by_trace: dict[int, list[Prediction]], ks: Sequence[int]) -> ErrorStats:
    preds = [p for i in sorted(by_trace) for p in by_trace[i]]
    pred_ks = [ks[i] for i in sorted(by_trace) for _ in by_trace[i]]
    return ErrorStats.of(preds, pred_ks)


def _mean_by(keys: Sequence, values: np.ndarray) -> dict:
    groups: dict = {}
    for key, value in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}
