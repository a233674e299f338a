"""Features of a batch and of its co-location.

Self features of a (model, batch size), from the profile:
    (1, compute_util, memory_util, log solo latency)   -- utilisations divided by their
    mean over the profile, log latency z-scored over the profile, so all are O(1).
Co-runner features of one co-runner: (1, compute_util, memory_util), same scaling; the
leading 1 makes the number of co-runners (how oversubscribed the device is) a feature.

A *co-load* sums co-runner features over the co-runners. The three extractors differ in
which co-runners and when:
    coarse  the co-runners present when the batch starts (the gpulet view)
    ewma    an exponentially weighted average over time of the device's load before start
    fine    the time-weighted average over the batch's own lifetime, (1/L) integral of
            sum_j f_j(t) dt, so arrivals and departures mid-batch count for their share.
On a CPU the co-load also carries the *oversubscription* of the cores, in each view's own
time frame (at start, EWMA, time average):
    oversub(n) = max(0, threads (1 + n) / cores - 1)
with n co-runners, `threads` intra-op threads per running batch and `cores` cores. Once
the runnable threads exceed the cores, the OS time-slices them and the slowdown grows with
the excess: a kink that no linear function of the co-runner count represents over several
concurrency levels, while a + beta . co_load stays linear in the co-load (the forecaster
relies on that). On an accelerator, or with oversub=False, the channel is absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from predlat.profiling.profile import MachineInfo, Profile
from predlat.traces.records import BatchRecord, Overlap

SELF_NAMES = ("bias", "compute_util", "memory_util", "log_solo")
LOAD_NAMES = ("co_count", "co_compute", "co_memory")
OVERSUB_NAME = "oversub"
INTERACTION_NAMES = ("compute_x_co_compute", "memory_x_co_memory")

Vector = tuple[float, ...]


class Oversubscription:
    """oversub(n) = max(0, threads (1 + n) / cores - 1): by how much the runnable threads of
    a batch and its n co-runners exceed the cores. Piecewise linear in n, with its kink at
    n = knee = cores / threads - 1; `c` = threads / cores is the slope above it."""

    __slots__ = ("_array", "c", "cores", "excess_table", "knee", "table", "threads", "zero")

    def __init__(self, threads: int, cores: int, max_table: int = 64):
        self.threads = threads
        self.cores = cores
        self.c = threads / cores
        self.knee = cores / threads - 1.0
        self.table = tuple(self(n) for n in range(max_table + 1))  # integer counts
        self.zero = self.table[0]
        self.excess_table = tuple(v - self.zero for v in self.table)

    def __call__(self, n: float) -> float:
        value = self.c * (1.0 + n) - 1.0
        return value if value > 0.0 else 0.0

    @property
    def array(self) -> np.ndarray:
        """`table` as an array, for compiled kernels (made once; an object loaded from a
        file saved without it makes it on first use)."""
        try:
            return self._array
        except AttributeError:
            self._array = np.asarray(self.table, dtype=np.float64)
            return self._array

    def at(self, n: int) -> float:
        """oversub of an integer count (a table look-up)."""
        return self.table[n] if 0 <= n < len(self.table) else self(n)

    def excess(self, n: int) -> float:
        """oversub(n) - oversub(0): what n co-runners add."""
        return self.at(n) - self.zero

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Oversubscription):
            return NotImplemented
        return (self.threads, self.cores) == (other.threads, other.cores)

    def __hash__(self) -> int:
        return hash((self.threads, self.cores))

    def __repr__(self) -> str:
        return f"Oversubscription(threads={self.threads}, cores={self.cores})"


def oversubscription(machine: MachineInfo) -> Oversubscription | None:
    """The machine's oversubscription law, or None where it does not apply (an
    accelerator computes: the OS does not time-slice it; unknown core or thread counts)."""
    if machine.accelerator:
        return None
    if machine.cores <= 0 or machine.intra_op_threads <= 0:
        return None
    return Oversubscription(machine.intra_op_threads, machine.cores)


class FeatureMap:
    """Cached per-(model, batch size) look-ups: solo latency, self and co-runner features;
    `oversub` is the machine's oversubscription law (None: no such channel)."""

    def __init__(self, profile: Profile, oversub: bool = True):
        self.profile = profile
        self.oversub = oversubscription(profile.machine) if oversub else None
        cus, mus, logs = [], [], []
        for model in profile.models:
            for n in profile.batch_sizes(model):
                f = profile.features(model, n)
                cus.append(float(f.get("compute_util", 0.0)))
                mus.append(float(f.get("memory_util", 0.0)))
                logs.append(math.log(max(profile.solo_latency(model, n), 1e-9)))
        self.cu_scale = _positive_mean(cus)
        self.mu_scale = _positive_mean(mus)
        self.log_mean = float(np.mean(logs)) if logs else 0.0
        self.log_std = float(np.std(logs)) if len(logs) > 1 and np.std(logs) > 1e-6 else 1.0
        self._solo: dict[tuple[str, int], float] = {}
        self._self: dict[tuple[str, int], Vector] = {}
        self._co: dict[tuple[str, int], Vector] = {}

    def solo(self, model: str, batch_size: int) -> float:
        key = (model, batch_size)
        value = self._solo.get(key)
        if value is None:
            value = max(float(self.profile.solo_latency(model, batch_size)), 1e-9)
            self._solo[key] = value
        return value

    def self_vec(self, model: str, batch_size: int) -> Vector:
        key = (model, batch_size)
        vec = self._self.get(key)
        if vec is None:
            cu, mu = self._utils(model, batch_size)
            z = (math.log(self.solo(model, batch_size)) - self.log_mean) / self.log_std
            vec = (1.0, cu, mu, z)
            self._self[key] = vec
        return vec

    def co_vec(self, model: str, batch_size: int) -> Vector:
        key = (model, batch_size)
        vec = self._co.get(key)
        if vec is None:
            cu, mu = self._utils(model, batch_size)
            vec = (1.0, cu, mu)
            self._co[key] = vec
        return vec

    def _utils(self, model: str, batch_size: int) -> tuple[float, float]:
        f = self.profile.features(model, batch_size)
        cu = float(f.get("compute_util", 0.0)) / self.cu_scale
        mu = float(f.get("memory_util", 0.0)) / self.mu_scale
        return cu, mu


def _positive_mean(values: list[float]) -> float:
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    return float(np.mean(pos)) if pos else 1.0


# -- coarse and fine ---------------------------------------------------------------------
def linear_load(record: BatchRecord, fmap: FeatureMap) -> Vector:
    """(1/L) integral over the batch's lifetime of the summed co-runner features
    (count, compute, memory)."""
    length = record.latency
    if length <= 0:
        return (0.0, 0.0, 0.0)
    n = cu = mu = 0.0
    for o in record.timeline:
        d = o.end - o.start
        if d <= 0:
            continue
        f = fmap.co_vec(o.model, o.batch_size)
        n += d
        cu += f[1] * d
        mu += f[2] * d
    inv = 1.0 / length
    return (n * inv, cu * inv, mu * inv)


def fine_load(record: BatchRecord, fmap: FeatureMap) -> Vector:
    """(1/L) integral over the batch's lifetime of the summed co-runner features, then
    of oversub(number of co-runners) if the map has it."""
    ov = fmap.oversub
    if ov is None:
        return linear_load(record, fmap)
    length = record.latency
    if length <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    # One pass for the linear channels, collecting arrivals and departures for the count.
    co_vec = fmap.co_vec
    n = cu = mu = 0.0
    starts, ends = [], []
    for o in record.timeline:
        s, e = o.start, o.end
        d = e - s
        if d <= 0:
            continue
        f = co_vec(o.model, o.batch_size)
        n += d
        cu += f[1] * d
        mu += f[2] * d
        starts.append(s)
        ends.append(e)
    starts.sort()
    ends.sort()
    over = _count_integral(starts, ends, ov.excess_table, ov.excess)
    inv = 1.0 / length
    # The time with no co-runner counts for oversub(0) (0 unless one batch alone
    # already has more threads than there are cores).
    return (n * inv, cu * inv, mu * inv, (over + ov.zero * length) * inv)


def count_integral(timeline: Iterable[Overlap], value: Callable[[int], float]) -> float:
    """Integral over time of value(number of co-runners present) while any is present,
    the count being piecewise constant between arrivals and departures."""
    starts = sorted(o.start for o in timeline if o.end > o.start)
    ends = sorted(o.end for o in timeline if o.end > o.start)
    return _count_integral(starts, ends, (), value)


def _count_integral(
    starts: list[float], ends: list[float], table: Sequence[float], value: Callable[[int], float]
) -> float:
    """count_integral over sorted arrivals and departures; value(count) is read from
    `table` where it reaches (a look-up is cheaper than a call)."""
    total, count, i, j, m = 0.0, 0, 0, 0, len(ends)
    top = len(table) - 1
    prev = starts[0] if starts else 0.0
    while j < m:
        if i < m and starts[i] <= ends[j]:
            t, delta, i = starts[i], 1, i + 1
        else:
            t, delta, j = ends[j], -1, j + 1
        if count:
            total += (table[count] if count <= top else value(count)) * (t - prev)
        count += delta
        prev = t
    return total


# -- design rows -------------------------------------------------------------------------
class Design:
    """Turns (self features s, co-load g) into a regression row [*s, *g], with
    `interact` also [s_compute g_compute, s_memory g_memory]: how much a co-runner's
    compute (memory) demand slows a batch then grows with the batch's own demand of that
    resource, as contention does (a memory-bound pair slows far more than a mixed one).
    The row is linear in the co-load for fixed self features, so the slowdown can be
    written a + beta . co_load, beta depending on the batch: the forecaster relies on
    that (see `parts`)."""

    def __init__(self, n_load: int, oversub: bool = False, interact: bool = False):
        self.n_load = n_load
        self.oversub = oversub  # the co-load's fourth channel is the oversubscription
        self.interact = interact
        self.dim = 4 + n_load + (2 if interact else 0)

    def names(self) -> list[str]:
        names = [*SELF_NAMES, *LOAD_NAMES, OVERSUB_NAME][: 4 + self.n_load]
        return names + list(INTERACTION_NAMES) if self.interact else names

    def row(self, s: Vector, g: Vector) -> list[float]:
        if self.interact:
            return [*s, *g, s[1] * g[1], s[2] * g[2]]
        return [*s, *g]

    def parts(self, w: Sequence[float], s: Vector) -> tuple[float, Vector]:
        a = w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3]
        n = 4 + self.n_load
        if not self.interact:
            return a, tuple(w[4:n])
        beta = list(w[4:n])
        beta[1] += w[n] * s[1]
        beta[2] += w[n + 1] * s[2]
        return a, tuple(beta)
