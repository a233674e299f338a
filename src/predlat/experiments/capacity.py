"""SLO capacity: the highest offered load at which a policy meets its deadlines.

A run meets the SLO when at least `hp` of its high-priority requests and `all` of all
its requests meet their deadlines (rejected and failed requests count as missed). The
capacity is found per policy and seed: a coarse sweep of loads brackets it (the highest
load below which every swept load met the SLO, and the first that did not), then
bisection narrows the bracket. The capacity is the highest load seen to meet the SLO;
the bracket's upper end says how far above it the first miss was. A policy that met the
SLO at every swept load has its capacity censored at the top of the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Slo:
    hp: float = 0.99  # fraction of high-priority requests that must meet their deadline
    all: float = 0.95  # ... of all requests

    def met(self, metrics: Mapping[str, Any]) -> bool:
        """Whether a run's metrics meet the SLO (no requests of a priority: nothing
        to miss)."""
        return _at_least(metrics.get("hp_met"), self.hp) and _at_least(
            metrics.get("met_frac"), self.all
        )


def _at_least(value: float | None, floor: float) -> bool:
    if value is None or not math.isfinite(value):
        return True
    return value >= floor - 1e-12


@dataclass
class Bisection:
    """The capacity search of one policy at one seed, one load at a time (so that the
    caller can interleave policies)."""

    lo: float  # highest load known to meet the SLO (0: none)
    hi: float | None  # lowest load known to miss it (None: none in the sweep)
    steps_left: int
    tested: list[tuple[float, bool]] = field(default_factory=list)

    @classmethod
    def from_sweep(cls, sweep: Mapping[float, bool], steps: int) -> Bisection:
        """The bracket from a sweep {load: met}: below the first load that missed, every
        load met it."""
        lo, hi = 0.0, None
        for load in sorted(sweep):
            if not sweep[load]:
                hi = load
                break
            lo = load
        return cls(lo, hi, steps, [(x, sweep[x]) for x in sorted(sweep)])

    def next_load(self) -> float | None:
        """The next load to try, or None when done (no steps left, or nothing above)."""
        if self.hi is None or self.steps_left <= 0:
            return None
        return 0.5 * (self.lo + self.hi)

    def record(self, load: float, met: bool) -> None:
        self.tested.append((load, met))
        self.steps_left -= 1
        if met:
            self.lo = max(self.lo, load)
        else:
            self.hi = load if self.hi is None else min(self.hi, load)

    @property
    def censored(self) -> bool:
        """Met the SLO at every load tried: the capacity is at least `lo`."""
        return self.hi is None


def find_capacity(meets: Callable[[float], bool], sweep: Sequence[float], steps: int) -> Bisection:
    """Sweep, then bisect, one policy and seed (`meets(load)` runs it)."""
    search = Bisection.from_sweep({x: meets(x) for x in sweep}, steps)
    while (load := search.next_load()) is not None:
        search.record(load, meets(load))
    return search


def pooled_capacity(searches: Sequence[Bisection], unit_rps: float) -> dict[str, Any]:
    """One policy's capacity over seeds: the mean and its standard error (None with one
    seed), in requests/s (`unit_rps` = requests/s at load 1) and as a load."""
    loads = [s.lo for s in searches]
    n = len(loads)
    mean = float(np.mean(loads)) if n else math.nan
    stderr = float(np.std(loads, ddof=1) / math.sqrt(n)) if n > 1 else None
    return {
        "rps": mean * unit_rps,
        "stderr": stderr * unit_rps if stderr is not None else None,
        "load": mean,
        "load_stderr": stderr,
        "per_seed_rps": [x * unit_rps for x in loads],
        "first_miss_rps": [None if s.hi is None else s.hi * unit_rps for s in searches],
        "censored": any(s.censored for s in searches),
        "tested": [[[x, met] for x, met in s.tested] for s in searches],
    }
