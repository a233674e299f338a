"""Noise floors: how well any predictor could do on repeated, identical runs.

Each repeated latency is scored against the median of the *other* repeats of the same
thing (leave-one-out): a predictor never sees the sample it predicts, so neither may the
floor. Scoring a sample against a median that includes it would understate the floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rel_errors import REL_ERROR_KEYS, RelErrors, rel_error_figures


def loo_errors(times: Sequence[float]) -> list[float]:
    """|x_i - median(x without x_i)| / x_i for each sample; empty under two samples."""
    x = np.asarray(times, dtype=float)
    if x.size < 2:
        return []
    return [float(abs(x[i] - np.median(np.delete(x, i))) / x[i]) for i in range(x.size) if x[i] > 0]


@dataclass
class FloorSummary(RelErrors):
    """Leave-one-out errors of repeated runs: overall, and the mean per group."""

    samples: int = 0
    per_group: dict[str, float] = field(default_factory=dict)
    per_group_samples: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how it was measured

    def to_json(self, group_name: str) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in REL_ERROR_KEYS},
            "samples": self.samples,
            group_name: dict(self.per_group),
            "samples_" + group_name: dict(self.per_group_samples),
            **self.info,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], group_name: str) -> FloorSummary:
        known = {*REL_ERROR_KEYS, "samples", group_name, "samples_" + group_name}
        return cls(
            **{k: _float(data.get(k)) for k in REL_ERROR_KEYS},
            samples=int(data.get("samples", 0)),
            per_group={str(k): _float(v) for k, v in (data.get(group_name) or {}).items()},
            per_group_samples={
                str(k): int(v) for k, v in (data.get("samples_" + group_name) or {}).items()
            },
            info={k: v for k, v in data.items() if k not in known},
        )


def floor_summary(
    samples: Mapping[Hashable, Sequence[float]], group_of: Callable[[Any], str]
) -> FloorSummary:
    """Leave-one-out errors of every sample group (`samples[key]`: repeated latencies of
    one identical run), pooled, with the mean error per `group_of(key)`."""
    errors: list[float] = []
    grouped: dict[str, list[float]] = {}
    for key, times in samples.items():
        rel = loo_errors(times)
        errors.extend(rel)
        grouped.setdefault(group_of(key), []).extend(rel)
    if not errors:
        return FloorSummary()
    e = np.asarray(errors)
    return FloorSummary(
        **rel_error_figures(e),
        samples=int(e.size),
        per_group={g: float(np.mean(v)) for g, v in sorted(grouped.items()) if v},
        per_group_samples={g: len(v) for g, v in sorted(grouped.items()) if v},
    )


def noise_floor(samples: Mapping[tuple[str, int], Sequence[float]]) -> FloorSummary:
    """The solo noise floor from repeated solo latencies keyed (model, batch size)."""
    return floor_summary(samples, lambda key: key[0])


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
