"""The figures every summary of relative errors reports: their mean and percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REL_ERROR_KEYS = ("mean_rel_err", "p50", "p95", "p99")


@dataclass
class RelErrors:
    """Mean, median, p95 and p99 of a set of relative errors (NaN: none measured)."""

    mean_rel_err: float = math.nan
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan


def rel_error_figures(rel: np.ndarray) -> dict[str, float]:
    """The RelErrors fields of a non-empty array of relative errors, as keywords."""
    p50, p95, p99 = np.percentile(rel, [50, 95, 99])
    return {
        "mean_rel_err": float(rel.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
    }
