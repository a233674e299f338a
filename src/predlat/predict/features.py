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
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise

import numpy as np

from predlat.profiling.profile import MachineInfo, Profile
from predlat.traces.records import BatchRecord, Overlap

SELF_NAMES = ("bias", "compute_util", "memory_util", "log_solo")
LOAD_NAMES = ("co_count", "co_compute", "co_memory")
OVERSUB_NAME = "oversub"

Vector = tuple[float, ...]


class Oversubscription:
    """oversub(n) = max(0, threads (1 + n) / cores - 1): by how much the runnable threads of
    a batch and its n co-runners exceed the cores. Piecewise linear in n, with its kink at
    n = knee = cores / threads - 1; `c` = threads / cores is the slope above it."""

    __slots__ = ("c", "cores", "knee", "table", "threads", "zero")

    def __init__(self, threads: int, cores: int, max_table: int = 64):
        self.threads = threads
        self.cores = cores
        self.c = threads / cores
        self.knee = cores / threads - 1.0
        self.table = tuple(self(n) for n in range(max_table + 1))  # integer counts
        self.zero = self.table[0]

    def __call__(self, n: float) -> float:
        value = self.c * (1.0 + n) - 1.0
        return value if value > 0.0 else 0.0

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
def coarse_load(record: BatchRecord, fmap: FeatureMap) -> Vector:
    """Sum of co-runner features over the co-runners present at the batch's start (and
    the oversubscription with that many co-runners)."""
    n = cu = mu = 0.0
    for o in record.co_runners_at_start():
        f = fmap.co_vec(o.model, o.batch_size)
        n += 1.0
        cu += f[1]
        mu += f[2]
    if fmap.oversub is None:
        return (n, cu, mu)
    return (n, cu, mu, fmap.oversub.at(int(n)))


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
    n, cu, mu = linear_load(record, fmap)
    over = count_integral(record.timeline, ov.excess)
    # The time with no co-runner counts for oversub(0) (0 unless one batch alone
    # already has more threads than there are cores).
    return (n, cu, mu, (over + ov.zero * length) * (1.0 / length))


def count_integral(timeline: Iterable[Overlap], value: Callable[[int], float]) -> float:
    """Integral over time of value(number of co-runners present) while any is present,
    the count being piecewise constant between arrivals and departures."""
    starts = sorted(o.start for o in timeline if o.end > o.start)
    ends = sorted(o.end for o in timeline if o.end > o.start)
    total, count, i, j = 0.0, 0, 0, 0
    prev = starts[0] if starts else 0.0
    while j < len(ends):
        if i < len(starts) and starts[i] <= ends[j]:
            t, delta, i = starts[i], 1, i + 1
        else:
            t, delta, j = ends[j], -1, j + 1
        if count:
            total += value(count) * (t - prev)
        count += delta
        prev = t
    return total


# -- ewma --------------------------------------------------------------------------------
def ewma_loads(records: Sequence[BatchRecord], fmap: FeatureMap, tau: float) -> dict[int, Vector]:
    """Exact EWMA (time constant tau) of each device's load signal sum_j f_j(t) (and of
    oversub(number of batches running), if the map has it) just before each batch's
    start, knowing every batch of `records` (start and end). For fitting. An idle device
    has load 0 and oversub(0)."""
    out: dict[int, Vector] = {}
    by_device: dict[int, list[BatchRecord]] = {}
    for r in records:
        by_device.setdefault(r.device, []).append(r)
    ov = fmap.oversub
    for recs in by_device.values():
        # (time, order, payload): queries (order 0) see the load before changes at t; the
        # EWMA is continuous in time, so the order only has to be consistent.
        events: list[tuple[float, int, int, Vector]] = []
        for r in recs:
            f = fmap.co_vec(r.model, r.batch_size)
            events.append((r.start, 0, r.batch_id, f))
            events.append((r.start, 1, r.batch_id, f))
            events.append((r.end, 2, r.batch_id, f))
        events.sort(key=lambda e: (e[0], e[1]))
        load = [0.0, 0.0, 0.0]
        ewma = [0.0, 0.0, 0.0]
        count = 0
        h = e_h = ov.zero if ov is not None else 0.0  # oversub now, and its EWMA
        prev = events[0][0] if events else 0.0
        for t, kind, batch_id, f in events:
            dt = t - prev
            if dt > 0:
                decay = math.exp(-dt / tau)
                for i in range(3):
                    ewma[i] = load[i] + (ewma[i] - load[i]) * decay
                e_h = h + (e_h - h) * decay
                prev = t
            if kind == 0:
                value = (ewma[0], ewma[1], ewma[2])
                out[batch_id] = value if ov is None else (*value, e_h)
            else:
                sign = 1.0 if kind == 1 else -1.0
                for i in range(3):
                    load[i] += sign * f[i]
                count += 1 if kind == 1 else -1
                if ov is not None:
                    h = ov.at(count)
    return out


class _CountSignal:
    """The number of batches running on a device over time, from finished batches, as
    segments [times[k], times[k+1]) of count counts[k], with prefix integrals
    cum[k] = integral_{-inf}^{times[k]} oversub(count(u)) dE(u), E(u) = exp((u - t_ref) / tau)
    (the device is idle before the first segment). The EWMA of oversub(count) at t0 is then
    one bisection and a division by E(t0) away. A batch added in end order changes only
    the segments of its own lifetime, so adding costs a handful of segments."""

    __slots__ = ("counts", "cum", "es", "horizon", "ov", "t_ref", "tau", "times")

    def __init__(self, ov: Oversubscription, tau: float, t_ref: float):
        self.ov = ov
        self.tau = tau
        self.t_ref = t_ref
        self.times: list[float] = []
        self.counts: list[int] = []
        self.es: list[float] = []
        self.cum: list[float] = []
        self.horizon = -math.inf  # what came before was forgotten

    def _boundary(self, t: float) -> int:
        """Index of the segment starting at t, splitting the one containing t if needed."""
        times = self.times
        k = bisect_right(times, t) - 1
        if k >= 0 and times[k] == t:
            return k
        k += 1
        times.insert(k, t)
        self.counts.insert(k, self.counts[k - 1] if k > 0 else 0)
        self.es.insert(k, math.exp((t - self.t_ref) / self.tau))
        self.cum.insert(k, 0.0)  # recomputed by the caller
        return k

    def add(self, start: float, end: float) -> None:
        if end <= start:
            return
        if start < self.horizon:
            start = self.horizon  # started in the forgotten past: clip
            if end <= start:
                return
        i = self._boundary(start)
        j = self._boundary(end)
        counts = self.counts
        for k in range(i, j):
            counts[k] += 1
        self._accumulate(i)

    def _accumulate(self, i: int) -> None:
        """Recompute cum from segment boundary i on."""
        at, es, cum, counts = self.ov.at, self.es, self.cum, self.counts
        if i == 0:
            cum[0] = self.ov.zero * es[0]
            i = 1
        for k in range(i, len(cum)):
            cum[k] = cum[k - 1] + at(counts[k - 1]) * (es[k] - es[k - 1])

    def rebase(self, t_ref: float, cut: float) -> None:
        """Forget segments that ended before `cut`; anchor E at t_ref."""
        times = self.times
        k = bisect_right(times, cut) - 1
        if k > 0:
            del times[:k], self.counts[:k], self.es[:k], self.cum[:k]
        if times:
            self.horizon = times[0]
        scale = math.exp((self.t_ref - t_ref) / self.tau)
        self.t_ref = t_ref
        self.es = [math.exp((t - t_ref) / self.tau) for t in times]
        self.cum = [c * scale for c in self.cum]

    def ewma(self, t0: float, extra: Sequence[float] = ()) -> float:
        """EWMA of oversub(count) at t0, counting also one more batch running over
        [t0 - d, t0) for each d in `extra` (batches running at t0 that have not finished)."""
        ov, times, tau = self.ov, self.times, self.tau
        k = bisect_right(times, t0) - 1
        if k < 0:
            value = ov.zero
        elif k == len(times) - 1:
            # At or after the last boundary: decay from there towards the last count.
            h = ov.at(self.counts[k])
            last = self.cum[k] / self.es[k] if self.es[k] > 0.0 else h
            value = h + (last - h) * math.exp((times[k] - t0) / tau)
        elif (self.t_ref - t0) / tau > 500.0:
            value = ov.at(self.counts[k])  # far in the past (only after long idle gaps)
        else:
            e0 = math.exp((t0 - self.t_ref) / tau)
            value = (self.cum[k] + ov.at(self.counts[k]) * (e0 - self.es[k])) / e0
        if not extra:
            return value
        # Correction where the unfinished batches add to the count, over [lo, t0).
        lo = t0 - max(extra)
        if lo >= t0:
            return value
        q = bisect_right(times, lo)  # first boundary after lo
        marks = sorted(t0 - d for d in extra if d > 0)
        inner = {t for t in times[q : k + 1] if t < t0}
        inner.update(m for m in marks if m > lo)
        points = [lo, *sorted(inner), t0]
        counts, at = self.counts, ov.at
        seg, x, corr = q - 1, 0, 0.0
        w_a = math.exp(-(t0 - lo) / tau)
        for a, b in pairwise(points):
            while seg + 1 < len(times) and times[seg + 1] <= a:
                seg += 1
            while x < len(marks) and marks[x] <= a:
                x += 1
            n = counts[seg] if seg >= 0 else 0
            w_b = math.exp(-(t0 - b) / tau)
            corr += (at(n + x) - at(n)) * (w_b - w_a)
            w_a = w_b
        return value + corr


class _DeviceHistory:
    """Finished batches of one device, sorted by end, with prefix sums of each batch's
    EWMA weight scaled by exp(t_ref / tau): the EWMA over all batches finished by t0 is
    then exp(-(t0 - t_ref) / tau) times a prefix sum, one bisection away."""

    __slots__ = ("cum", "ends", "entries", "ids", "longest", "signal", "t_ref")

    def __init__(self, t_ref: float, signal: _CountSignal | None):
        self.t_ref = t_ref
        self.signal = signal  # the running count over time, for the oversub channel
        self.longest = 0.0  # longest batch seen: queries reach back that far
        self.entries: list[tuple[float, float, Vector, int]] = []  # (end, start, f, id)
        self.ends: list[float] = []
        self.cum: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self.ids: set[int] = set()


class EwmaHistory:
    """Finished batches per device, for the EWMA of the load (and of the oversubscription)
    before a batch's start when batches arrive one at a time (posterior mode). Co-runners
    present at the start but not finished yet have an unknown start: assumed to have run
    half their solo latency.
    Look-ups cost a bisection plus the few batches still running at the start."""

    def __init__(self, fmap: FeatureMap, tau: float):
        self.fmap = fmap
        self.tau = tau
        self._devices: dict[int, _DeviceHistory] = {}

    def clear(self) -> None:
        self._devices.clear()

    def add(self, record: BatchRecord) -> None:
        dev = self._devices.get(record.device)
        if dev is None:
            ov = self.fmap.oversub
            signal = _CountSignal(ov, self.tau, record.end) if ov is not None else None
            dev = self._devices[record.device] = _DeviceHistory(record.end, signal)
        if record.batch_id in dev.ids:
            return
        entry = (
            record.end,
            record.start,
            self.fmap.co_vec(record.model, record.batch_size),
            record.batch_id,
        )
        dev.ids.add(record.batch_id)
        dev.longest = min(max(dev.longest, record.latency), 100.0 * self.tau)
        if (record.end - dev.t_ref) / self.tau > 40.0:
            self._rebuild(dev, record.end, entry)
        elif dev.ends and record.end < dev.ends[-1]:
            # Out of end order (rare): insert and recompute the prefix sums after it.
            i = bisect_right(dev.ends, record.end)
            dev.entries.insert(i, entry)
            dev.ends.insert(i, record.end)
            del dev.cum[i + 1 :]
            for e in dev.entries[i:]:
                self._push(dev, e)
        else:
            dev.entries.append(entry)
            dev.ends.append(record.end)
            self._push(dev, entry)
        if dev.signal is not None:
            dev.signal.add(record.start, record.end)

    def _push(self, dev: _DeviceHistory, entry: tuple[float, float, Vector, int]) -> None:
        end, start, f, _ = entry
        w = math.exp((end - dev.t_ref) / self.tau) - math.exp((start - dev.t_ref) / self.tau)
        c = dev.cum[-1]
        dev.cum.append((c[0] + w, c[1] + f[1] * w, c[2] + f[2] * w))

    def _rebuild(self, dev: _DeviceHistory, latest: float, entry) -> None:
        # Drop batches that ended long before any start still to be asked about (< exp(-8)
        # of weight left) and re-anchor t_ref so the scaled weights stay far from overflow.
        cut = latest - dev.longest - 8.0 * self.tau
        keep = [e for e in dev.entries if e[0] >= cut]
        keep.append(entry)
        keep.sort(key=lambda e: e[0])
        dev.t_ref = latest
        if dev.signal is not None:
            dev.signal.rebase(latest, cut)
        dev.entries, dev.ends, dev.cum = [], [], [(0.0, 0.0, 0.0)]
        dev.ids = {e[3] for e in keep}
        for e in keep:
            dev.entries.append(e)
            dev.ends.append(e[0])
            self._push(dev, e)

    def value(self, record: BatchRecord) -> Vector:
        t0, tau = record.start, self.tau
        n = cu = mu = 0.0
        dev = self._devices.get(record.device)
        ids: set[int] = set()
        if dev is not None:
            ids = dev.ids
            i = bisect_right(dev.ends, t0)
            if (dev.t_ref - t0) / tau < 30.0:
                scale = math.exp((dev.t_ref - t0) / tau)
                c = dev.cum[i]
                n, cu, mu = c[0] * scale, c[1] * scale, c[2] * scale
                first = i
            else:  # long before t_ref (fitting on old data): sum the recent past directly
                first = bisect_right(dev.ends, t0 - dev.longest - 8.0 * tau)
            for end, start, f, _ in dev.entries[first:]:
                if start < t0:
                    hi = end if end < t0 else t0  # finished after t0: clip at t0
                    w = math.exp((hi - t0) / tau) - math.exp((start - t0) / tau)
                    n += w
                    cu += f[1] * w
                    mu += f[2] * w
        extra = []
        for o in record.co_runners_at_start():
            if o.batch_id in ids:
                continue
            f = self.fmap.co_vec(o.model, o.batch_size)
            d = 0.5 * self.fmap.solo(o.model, o.batch_size)
            w = 1.0 - math.exp(-d / tau)
            n += w
            cu += f[1] * w
            mu += f[2] * w
            extra.append(d)
        ov = self.fmap.oversub
        if ov is None:
            return (n, cu, mu)
        signal = dev.signal if dev is not None else _CountSignal(ov, tau, t0)
        return (n, cu, mu, signal.ewma(t0, extra))


# -- design rows -------------------------------------------------------------------------
class Design:
    """Turns (self features, co-load) into a regression row [*self, *co_load]. The row is
    linear in the co-load for fixed self features, so the slowdown can be written
    a + beta . co_load: the forecaster relies on that (see `parts`)."""

    def __init__(self, n_load: int, oversub: bool = False):
        self.n_load = n_load
        self.oversub = oversub  # the co-load's fourth channel is the oversubscription
        self.dim = 4 + n_load

    def names(self) -> list[str]:
        return [*SELF_NAMES, *LOAD_NAMES, OVERSUB_NAME][: self.dim]

    def row(self, s: Vector, g: Vector) -> list[float]:
        return [*s, *g]

    def parts(self, w: Sequence[float], s: Vector) -> tuple[float, Vector]:
        a = w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3]
        return a, tuple(w[4 : 4 + self.n_load])
