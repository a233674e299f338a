"""Pooling repeated comparison runs and assembling results.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predlat.experiments.capacity import Bisection, pooled_capacity
from predlat.experiments.compare_runs import RunResult
from predlat.scheduling.outcome import RequestOutcome, summarize

# What results.json carries per policy and load (fractions in 0..1, rates per second).
METRIC_KEYS = (
    "hp_met",
    "lp_met",
    "met_frac",
    "goodput_rps",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "rejected_frac",
    "utilization",
    "live_forecast_err",
    "planned_end_exceeded",
    "dispatch_lag_p50_ms",
    "dispatch_lag_p99_ms",
    "mean_batch_size",
    "requests",
    "hp_requests",
    "submit_lag_p99_ms",
    "foreign_cpu_frac",
    "host_cpu_cores",
    "host_cpu_ms_per_batch",
)


def stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean of per-run values (None with fewer than two)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    return float(np.std(finite, ddof=1) / math.sqrt(len(finite)))


def pooled_metrics(results: Sequence[RunResult], duration_s: float) -> dict[str, Any]:
    """One policy's metrics over repeated runs: the outcome figures (deadlines met,
    rates, latency percentiles, rejections) over all their requests together, the
    device figures (utilization, lags, forecast error, batch size) averaged; with more
    than one run, `stderr` holds each figure's standard error over the runs."""
    outcomes = [o for r in results for o in r.outcomes]
    if len(results) == 1:
        return {**results[0].metrics, "by_model": by_model(outcomes)}
    metrics: dict[str, Any] = summarize(outcomes, duration_s * len(results))
    metrics["by_model"] = by_model(outcomes)
    for key in METRIC_KEYS:
        if key not in metrics:
            values = [v for r in results if math.isfinite(v := r.metrics.get(key, math.nan))]
            metrics[key] = float(np.mean(values)) if values else math.nan
    metrics["stderr"] = {
        key: stderr([r.metrics.get(key, math.nan) for r in results]) for key in METRIC_KEYS
    }
    metrics["hp_met_runs"] = [r.metrics.get("hp_met") for r in results]
    return metrics


def by_model(outcomes: Sequence[RequestOutcome]) -> dict[str, dict[str, float]]:
    """Per model: its requests, deadlines met and the latency percentiles of its
    finished requests, as `summarize` counts them. (In a mix, the overall p50 falls
    between the models' and a few requests move it: a per-model figure compares like
    with like.)"""
    mine: dict[str, list[RequestOutcome]] = {}
    for o in outcomes:
        mine.setdefault(o.model, []).append(o)
    out = {}
    for model in sorted(mine):
        summary = summarize(mine[model], 1.0)  # (no rates are read: any duration)
        out[model] = {k: summary[k] for k in ("requests", "met_frac", "p50_ms", "p99_ms")}
    return out


def policy_entry(metrics: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {k: clean(metrics.get(k)) for k in METRIC_KEYS}
    if "by_model" in metrics:
        entry["by_model"] = _clean_tree(metrics["by_model"])
    if "stderr" in metrics:
        entry["stderr"] = {k: clean(v) for k, v in metrics["stderr"].items()}
    if "hp_met_runs" in metrics:
        entry["hp_met_runs"] = [clean(v) for v in metrics["hp_met_runs"]]
    return entry


def loads_section(
    sweep: Mapping[float, Mapping[str, list[RunResult]]],
    orders: Mapping[float, list[list[str]]],
    capacity_rps: float,
    duration_s: float,
) -> dict[str, Any]:
    return {
        load_key(load): {
            "offered_rps": load * capacity_rps,
            "order": orders.get(load, []),
            "policies": {
                p: policy_entry(pooled_metrics(rs, duration_s)) for p, rs in by_policy.items()
            },
        }
        for load, by_policy in sweep.items()
    }


def capacity_section(
    searches: Mapping[str, Sequence[Bisection]], capacity_rps: float
) -> dict[str, Any]:
    return {p: _clean_tree(pooled_capacity(s, capacity_rps)) for p, s in searches.items()}


def ratios(capacity: Mapping[str, Any], loads: Mapping[str, Any], ours: str) -> dict[str, Any]:
    """Plain ratios of `ours` to every other policy, each {value, stderr} (the
    standard error propagated from both figures' to first order; None with one seed):
    SLO capacity, and live forecast error per load."""
    out: dict[str, Any] = {"ours": ours, "slo_capacity": {}, "live_forecast_err": {}}
    mine = capacity.get(ours, {})
    for p, c in capacity.items():
        if p != ours:
            out["slo_capacity"][p] = ratio(
                mine.get("rps"), mine.get("stderr"), c.get("rps"), c.get("stderr")
            )
    key_err = "live_forecast_err"
    for key, entry in loads.items():
        pol = entry["policies"]
        if ours not in pol:
            continue
        a = pol[ours]
        out[key_err][key] = {
            p: ratio(
                a.get(key_err),
                a.get("stderr", {}).get(key_err),
                m.get(key_err),
                m.get("stderr", {}).get(key_err),
            )
            for p, m in pol.items()
            if p != ours
        }
    return out


def ratio(
    a: float | None, se_a: float | None, b: float | None, se_b: float | None
) -> dict[str, float | None]:
    """a / b with its first-order standard error (None where either error is unknown)."""
    if a is None or b is None or not b > 0:
        return {"value": None, "stderr": None}
    value = a / b
    se = None
    if se_a is not None and se_b is not None:
        se = math.sqrt((se_a / b) ** 2 + (value * se_b / b) ** 2)
    return {"value": float(value), "stderr": se}


def load_key(load: float) -> str:
    return f"{load:g}"


def clean(value: Any) -> Any:
    """JSON-safe: non-finite numbers become None."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _clean_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_tree(v) for v in value]
    return clean(value)
