"""The simulated device's interference law, its cost model's shape and its seeded
noise: the parameters of the ground truth `predlat.devices.simulated` describes."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import NormalDist

from predlat.errors import ConfigError

_MASK64 = (1 << 64) - 1
_STANDARD_NORMAL = NormalDist()


def seeded_uniform(seed: int, key: int) -> float:
    """A uniform in (0, 1) fixed by (seed, key): splitmix64 of the pair. Cheaper than
    seeding a generator per batch, and stateless, so the draw does not depend on the
    order in which batches are asked about."""
    x = (seed * 0x9E3779B97F4A7C15 + key + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return ((x >> 11) + 0.5) / (1 << 53)


def seeded_normal(seed: int, key: int) -> float:
    """A standard normal fixed by (seed, key): `seeded_uniform` through the inverse CDF."""
    return _STANDARD_NORMAL.inv_cdf(seeded_uniform(seed, key))


# Probabilities measured tables are taken at: dense in the tails, where p99s live.
PROBS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


@dataclass(frozen=True)
class QuantileTable:
    """A measured distribution: quantiles at probabilities `probs` (increasing, from 0 to
    1), one row per case (rows[k]; cases past the last row use the last). A draw is the
    row's inverse CDF, linear between quantiles, at a seeded uniform: unlike a
    log-normal it keeps a measured tail's skew (a host's stalls lengthen batches and
    hand-offs, nothing shortens them as much). As noise: the log of a batch's work over
    its solo latency, one row per batch already running at its submission; as a hand-off:
    one row of seconds."""

    probs: tuple[float, ...]
    rows: tuple[tuple[float, ...], ...]

    def validate(self) -> None:
        p = self.probs
        if len(p) < 2 or p[0] != 0.0 or p[-1] != 1.0 or any(b <= a for a, b in pairwise(p)):
            raise ConfigError("quantile table: probs must increase from 0 to 1")
        if not self.rows:
            raise ConfigError("quantile table: needs at least one row")
        for k, row in enumerate(self.rows):
            if len(row) != len(p) or any(b < a for a, b in pairwise(row)):
                raise ConfigError(
                    f"quantile table: row {k} must give one non-decreasing value per prob"
                )

    def quantile(self, u: float, case: int = 0) -> float:
        """Row `case`'s quantile at probability `u` (linear between the table's)."""
        row = self.rows[min(case, len(self.rows) - 1)]
        p = self.probs
        i = min(max(bisect.bisect_right(p, u) - 1, 0), len(p) - 2)
        w = (u - p[i]) / (p[i + 1] - p[i])
        return row[i] + w * (row[i + 1] - row[i])

    @classmethod
    def of(cls, probs: Sequence[float], rows: Sequence[Sequence[float]]) -> QuantileTable:
        return cls(tuple(map(float, probs)), tuple(tuple(map(float, r)) for r in rows))


# (solo latency in seconds, compute demand, memory demand) of a (model, batch size).
CostFn = Callable[[str, int], tuple[float, float, float]]


HANDOFFS = ("arrival_s", "dispatch_s", "completion_s")  # InterferenceLaw's hand-off fields


@dataclass(frozen=True)
class InterferenceLaw:
    base: float = 0.05  # slowdown every co-runner adds, whatever it does
    compute: float = 0.6  # weight of compute-compute contention
    memory: float = 1.0  # weight of memory-memory contention
    noise_sigma: float = 0.03  # log-normal sigma of a batch's solo work
    failure_rate: float = 0.0
    cores: int | None = None  # time-share this many cores (None: no such limit)
    # slowdown that a batch of model b adds to one of model a, by (a, b): calibrated
    pairs: Mapping[tuple[str, str], float] | None = None
    noise_per_corunner: float = 0.0  # sigma added per batch already running at submit
    # the host's hand-offs (s): arrival -> scheduler, decision -> start, end -> scheduler
    arrival_s: float = 0.0
    dispatch_s: float = 0.0
    completion_s: float = 0.0
    # measured noise (replaces the log-normal's sigmas when set): `QuantileTable`
    noise_table: QuantileTable | None = None
    # measured hand-offs (s; replace dispatch_s and completion_s's constants when set)
    dispatch_table: QuantileTable | None = None
    completion_table: QuantileTable | None = None
    # The host's own CPU per batch (s): a CPU runtime's scheduling, hand-offs and threads.
    # While the running batches hold all `host_cores` cores, it is taken from them.
    host_cpu_s: float = 0.0
    host_cores: int | None = None

    def validate(self) -> None:
        for name in (
            "base",
            "compute",
            "memory",
            "noise_sigma",
            "noise_per_corunner",
            "host_cpu_s",
            *HANDOFFS,
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"interference law: {name} must be non-negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ConfigError("interference law: failure_rate must be in [0, 1]")
        if self.cores is not None and self.cores < 1:
            raise ConfigError("interference law: cores must be at least 1")
        if self.host_cores is not None and self.host_cores < 1:
            raise ConfigError("interference law: host_cores must be at least 1")
        for table in (self.noise_table, self.dispatch_table, self.completion_table):
            if table is not None:
                table.validate()

    def pair(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        """Slowdown that co-runner b adds to batch a."""
        return self.base + self.compute * a[0] * b[0] + self.memory * a[1] * b[1]

    def pair_of(
        self, a_model: str, a: tuple[float, float], b_model: str, b: tuple[float, float]
    ) -> float:
        """Slowdown that a co-runner of `b_model` adds to a batch of `a_model`."""
        if self.pairs is not None:
            value = self.pairs.get((a_model, b_model))
            if value is not None:
                return value
        return self.pair(a, b)
