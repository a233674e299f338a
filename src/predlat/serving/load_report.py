"""The load generator's report: what the client saw (latency, send lag, deadlines per
priority and model, refusals and how fast they came) and what the server counted (its
/metrics before and after the run)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from predlat.serving.loadgen import LoadConfig, Sample

# Server counters the report compares, and the labels that split them.
SERVER_COUNTERS = {
    "predlat_requests": "outcome",
    "predlat_refusals": "reason",
    "predlat_late_answers": None,
    "predlat_delayed_requests": None,
}


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None, "mean": None, "max": None}
    array = np.asarray(values, dtype=float) * 1e3
    return {
        "p50": round(float(np.percentile(array, 50)), 4),
        "p99": round(float(np.percentile(array, 99)), 4),
        "mean": round(float(array.mean()), 4),
        "max": round(float(array.max()), 4),
    }


def _deadline_ms(sample: Sample, config: LoadConfig) -> float | None:
    if config.deadline_ms is not None:
        return config.deadline_ms
    return sample.server.get("predlat_deadline_ms")


def _group(samples: Sequence[Sample], config: LoadConfig) -> dict[str, Any]:
    ok = [s for s in samples if s.status_code == 200]
    statuses = Counter(s.server.get("predlat_status") for s in ok)
    on_time = 0
    for s in ok:
        deadline = _deadline_ms(s, config)
        on_time += deadline is not None and s.latency * 1e3 <= deadline
    sent = len(samples)
    return {
        "sent": sent,
        "ok": len(ok),
        "met": statuses.get("met", 0),
        "missed": statuses.get("missed", 0),
        "refused_or_failed": sent - len(ok),
        "deadline_satisfaction_server": round(statuses.get("met", 0) / sent, 4) if sent else None,
        "deadline_satisfaction_client": round(on_time / sent, 4) if sent else None,
        "latency_ms": _percentiles([s.latency for s in ok]),
    }


def summarize(
    samples: Sequence[Sample], config: LoadConfig, models: Sequence[str], wall_s: float
) -> dict[str, Any]:
    ok = [s for s in samples if s.status_code == 200]
    sent_times = [s.sent for s in samples if not math.isnan(s.sent)]
    span = (max(sent_times) - min(sent_times)) if len(sent_times) > 1 else 0.0
    with_times = [s for s in ok if "predlat_latency_ms" in s.server]
    codes = Counter(str(s.status_code) for s in samples)
    errors = Counter(s.error for s in samples if s.error)
    return {
        "config": asdict(config),
        "models": list(models),
        "requests": len(samples),
        "wall_s": round(wall_s, 3),
        "offered_rate_rps": round(len(sent_times) / span, 3) if span > 0 else None,
        "achieved_rate_rps": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "latency_ms": _percentiles([s.latency for s in ok]),
        # How fast refusals came back (a refusal should be cheap and early).
        "refusal_latency_ms": _percentiles(
            [s.latency for s in samples if s.status_code not in (0, 200)]
        ),
        "send_lag_ms": _percentiles(
            [s.sent - s.scheduled for s in samples if not math.isnan(s.sent)]
        ),
        # End-to-end minus the runtime's own arrival-to-end time: HTTP, parsing, encoding.
        "server_overhead_ms": _percentiles(
            [s.latency - s.server["predlat_latency_ms"] / 1e3 for s in with_times]
        ),
        # End-to-end minus the batch's execution time (includes queueing for a slot).
        "overhead_vs_compute_ms": _percentiles(
            [s.latency - s.server["predlat_compute_ms"] / 1e3 for s in with_times]
        ),
        "by_priority": {
            "high": _group([s for s in samples if s.high_priority], config),
            "low": _group([s for s in samples if not s.high_priority], config),
        },
        "by_model": {m: _group([s for s in samples if s.model == m], config) for m in models},
        "status_codes": dict(sorted(codes.items())),
        "errors": dict(errors.most_common(10)),
    }


def server_counts(metrics_text: str) -> dict[str, float]:
    """The server's counters the report compares, flattened: `name{label}` -> value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in SERVER_COUNTERS:
            continue
        label = SERVER_COUNTERS[family.name]
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = family.name if label is None else f"{family.name}{{{sample.labels[label]}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def server_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What the server counted during the run (counters after minus before)."""
    keys = sorted(set(before) | set(after))
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in delta.items() if v}
