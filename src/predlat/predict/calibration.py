"""Latency quantiles by split-conformal calibration over a sliding window.

The calibrator keeps the most recent relative residuals r = actual / predicted - 1 of
predictions made *before* the outcome was known. The q-quantile of a new latency is
predicted * (1 + r_q), with r_q the ceil((n + 1) q)-th smallest residual of the window:
for exchangeable residuals, a fraction of at most 1 - q of new latencies exceeds it. The
sliding window follows drift (a new model mix, a load change).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable


class Calibrator:
    def __init__(self, window: int = 256, default_margin: float = 0.25, min_count: int = 20):
        if window < 1:
            raise ValueError("calibration window must be at least 1")
        self.window = window
        self.default_margin = default_margin
        self.min_count = min_count
        self._residuals: deque[float] = deque(maxlen=window)
        self._cache: dict[float, float] = {}
        # The window kept sorted as residuals come and go: a quantile after every new
        # residual (as forecasting does) then costs a bisection, not a sort.
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._residuals)

    def reset(self) -> None:
        self._residuals.clear()
        self._cache.clear()
        self._sorted = []

    def add(self, residual: float) -> None:
        if math.isfinite(residual):
            ordered = self._sorted
            if len(self._residuals) == self.window:
                del ordered[bisect.bisect_left(ordered, self._residuals[0])]
            self._residuals.append(residual)
            bisect.insort(ordered, residual)
            self._cache.clear()

    def extend(self, residuals: Iterable[float]) -> None:
        for r in residuals:
            self.add(r)

    def residuals(self) -> list[float]:
        return list(self._residuals)

    def quantile(self, q: float) -> float:
        """Relative margin r_q >= 0 (quantile = predicted * (1 + r_q)). Until min_count
        residuals exist, at least `default_margin`."""
        cached = self._cache.get(q)
        if cached is not None:
            return cached
        n = len(self._residuals)
        if n == 0:
            value = self.default_margin
        else:
            rank = min(n, max(1, math.ceil((n + 1) * q)))
            value = self._sorted[rank - 1]
            if n < self.min_count:
                value = max(value, self.default_margin)
        value = max(0.0, value)
        self._cache[q] = value
        return value
