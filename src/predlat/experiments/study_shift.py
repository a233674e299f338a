"""Workload shift: one factor changes (model set, load or K), and adaptive predictors
must catch up.

Each predictor is fitted on the first part of a `before` trace, then streams, in forecast
mode and learning online where it can, the rest of that trace followed by an `after`
trace that differs in exactly one factor, as one device's run. Recovery is measured
against what is achievable in the new regime: a predictor of the same kind fitted on the
first part of `after` alone and evaluated on its rest. A predictor has recovered after r
batches when its rolling error is at most `factor` x that achievable error at batch r
and at every batch of the full window after it; a brief dip does not count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from predlat.predict import evaluate_forecast, make_predictor
from predlat.profiling.profile import Profile

from .study_config import EvalConfig
from .study_data import StudyTrace
from .study_eval import relabel, split_chronological

FACTORS = ("set", "load", "k")
FACTOR_LABELS = {"set": "model set", "load": "load", "k": "concurrency K"}


def rolling_mean(values: Sequence[float], window: int, min_periods: int = 1) -> np.ndarray:
    """Trailing mean over the last `window` values; NaN until `min_periods` are seen."""
    x = np.asarray(values, dtype=float)
    out = np.full(x.size, np.nan)
    cum = np.concatenate(([0.0], np.cumsum(x)))
    for k in range(1, x.size + 1):
        lo = max(0, k - window)
        if k - lo >= min_periods:
            out[k - 1] = (cum[k] - cum[lo]) / (k - lo)
    return out


def recovery_batches(
    after_errors: Sequence[float], threshold: float, window: int = 50, min_periods: int = 10
) -> int | None:
    """Batches after the shift until the rolling mean error is at most `threshold` and
    stays so for `window` consecutive batches; None if that never happens before the
    stream ends (a hold cut short by the end does not count)."""
    if not math.isfinite(threshold):
        return None
    ok = np.nan_to_num(rolling_mean(after_errors, window, min_periods), nan=np.inf) <= threshold
    for r in range(ok.size - window + 1):
        if ok[r : r + window].all():
            return r + 1
    return None


@dataclass
class ShiftResult:
    """One predictor across one shift."""

    online: bool
    before_mean_rel_err: float
    after_mean_rel_err: float
    after_last_window_mean_rel_err: float
    achievable_rel_err: float  # same kind, fitted on the new regime alone
    threshold: float
    recovery_batches: int | None
    errors: list[float] = field(default_factory=list, repr=False)  # streamed, start order


@dataclass
class ShiftEvaluation:
    factor: str
    before: StudyTrace
    after: StudyTrace
    shift_index: int = 0  # batches streamed before the shift
    train_batches: int = 0
    predictors: dict[str, ShiftResult] = field(default_factory=dict)


def _score(a: StudyTrace, b: StudyTrace, factor: str, main: str) -> tuple:
    """Lower is a better pair: in the main regime, from the first subset to the next,
    upwards in load and K, near medium load."""
    return (
        a.regime != main,
        factor == "set" and not (a.set_name == "A" and b.set_name == "B"),
        factor == "load" and -(b.load - a.load),
        factor == "k" and (a.concurrency, -b.concurrency),
        -len(a.models),
        abs(a.load - 0.5),
        a.name,
        b.name,
    )


def shift_pairs(
    traces: Sequence[StudyTrace], main: str
) -> dict[str, tuple[StudyTrace, StudyTrace]]:
    """Per factor, the best (before, after) pair of traces that differ only in it."""
    out = {}
    for factor in FACTORS:
        pairs = [
            (a, b)
            for a in traces
            for b in traces
            if a.differs_only_in(b, factor)
            and (factor == "set" or (a.load, a.concurrency) < (b.load, b.concurrency))
        ]
        if pairs:
            out[factor] = min(pairs, key=lambda p: _score(p[0], p[1], factor, main))
    return out


def achievable_error(name: str, trace: StudyTrace, profile: Profile, config: EvalConfig) -> float:
    """Forecast error of `name` fitted on the first part of `trace` and tested on the rest."""
    train, test = split_chronological(relabel(trace.records, device=0), config.train_frac)
    preds = evaluate_forecast(make_predictor(name, profile).fit(train), profile, test)
    return float(np.mean([p.rel_err for p in preds])) if preds else math.nan


def evaluate_shift(
    factor: str, before: StudyTrace, after: StudyTrace, profile: Profile, config: EvalConfig
) -> ShiftEvaluation:
    train, pre = split_chronological(relabel(before.records, device=0), config.train_frac)
    gap = 1.0  # idle second between the two runs: no batch of one overlaps the other
    end = max((r.end for r in before.records), default=0.0)
    start = min((r.dispatch for r in after.records), default=0.0)
    first_id = max((r.batch_id for r in before.records), default=-1) + 1
    post = relabel(after.records, id_offset=first_id, time_offset=end + gap - start, device=0)
    pre_ids = {r.batch_id for r in pre}
    result = ShiftEvaluation(factor, before, after, train_batches=len(train))
    for name in config.predictors:
        fitted = make_predictor(name, profile).fit(train)
        preds = evaluate_forecast(fitted, profile, pre + post, config.quantile)
        errors = [p.rel_err for p in preds]
        result.shift_index = sum(1 for p in preds if p.batch_id in pre_ids)
        achievable = achievable_error(name, after, profile, config)
        result.predictors[name] = shift_result(
            errors, result.shift_index, achievable, config, bool(getattr(fitted, "online", False))
        )
    return result


def shift_result(
    errors: list[float], shift_index: int, achievable: float, config: EvalConfig, online: bool
) -> ShiftResult:
    before, after = errors[:shift_index], errors[shift_index:]
    threshold = config.recovery_factor * achievable
    return ShiftResult(
        online=online,
        before_mean_rel_err=float(np.mean(before)) if before else math.nan,
        after_mean_rel_err=float(np.mean(after)) if after else math.nan,
        after_last_window_mean_rel_err=(
            float(np.mean(after[-config.window :])) if after else math.nan
        ),
        achievable_rel_err=achievable,
        threshold=threshold,
        recovery_batches=recovery_batches(after, threshold, config.window, config.min_periods),
        errors=errors,
    )


def evaluate_shifts(
    traces: Sequence[StudyTrace], profile: Profile, config: EvalConfig, main: str
) -> dict[str, ShiftEvaluation]:
    return {
        factor: evaluate_shift(factor, a, b, profile, config)
        for factor, (a, b) in shift_pairs(traces, main).items()
    }
