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
The fine co-load may carry a fourth channel, the time average of (number of co-runners)^2,
for devices whose slowdown grows faster than linearly when oversubscribed.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence

import numpy as np

from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord, Overlap

SELF_NAMES = ("bias", "compute_util", "memory_util", "log_solo")
LOAD_NAMES = ("co_count", "co_compute", "co_memory")
SQUARE_NAME = "co_count_sq"

Vector = tuple[float, ...]


class FeatureMap:
    """Cached per-(model, batch size) look-ups: solo latency, self and co-runner features."""

    def __init__(self, profile: Profile):
        self.profile = profile
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
    """Sum of co-runner features over the co-runners present at the batch's start."""
    n = cu = mu = 0.0
    for o in record.co_runners_at_start():
        f = fmap.co_vec(o.model, o.batch_size)
        n += 1.0
        cu += f[1]
        mu += f[2]
    return (n, cu, mu)


def fine_load(record: BatchRecord, fmap: FeatureMap, squares: bool = False) -> Vector:
    """(1/L) integral over the batch's lifetime of the summed co-runner features."""
    length = record.latency
    if length <= 0:
        return (0.0, 0.0, 0.0, 0.0) if squares else (0.0, 0.0, 0.0)
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
    if not squares:
        return (n * inv, cu * inv, mu * inv)
    return (n * inv, cu * inv, mu * inv, count_square_integral(record.timeline) * inv)


def count_square_integral(timeline: Iterable[Overlap]) -> float:
    """Integral of (number of co-runners present)^2 over time."""
    events = []
    for o in timeline:
        if o.end > o.start:
            events.append((o.start, 1))
            events.append((o.end, -1))
    if not events:
        return 0.0
    events.sort()
    total, count, prev = 0.0, 0, events[0][0]
    for t, delta in events:
        total += count * count * (t - prev)
        count += delta
        prev = t
    return total


# -- ewma --------------------------------------------------------------------------------
def ewma_loads(records: Sequence[BatchRecord], fmap: FeatureMap, tau: float) -> dict[int, Vector]:
    """Exact EWMA (time constant tau) of each device's load signal sum_j f_j(t) just before
    each batch's start, knowing every batch of `records` (start and end). For fitting."""
    out: dict[int, Vector] = {}
    by_device: dict[int, list[BatchRecord]] = {}
    for r in records:
        by_device.setdefault(r.device, []).append(r)
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
        prev = events[0][0] if events else 0.0
        for t, kind, batch_id, f in events:
            dt = t - prev
            if dt > 0:
                decay = math.exp(-dt / tau)
                for i in range(3):
                    ewma[i] = load[i] + (ewma[i] - load[i]) * decay
                prev = t
            if kind == 0:
                out[batch_id] = (ewma[0], ewma[1], ewma[2])
            else:
                sign = 1.0 if kind == 1 else -1.0
                for i in range(3):
                    load[i] += sign * f[i]
    return out


class _DeviceHistory:
    """Finished batches of one device, sorted by end, with prefix sums of each batch's
    EWMA weight scaled by exp(t_ref / tau): the EWMA over all batches finished by t0 is
    then exp(-(t0 - t_ref) / tau) times a prefix sum, one bisection away."""

    __slots__ = ("cum", "ends", "entries", "ids", "longest", "t_ref")

    def __init__(self, t_ref: float):
        self.t_ref = t_ref
        self.longest = 0.0  # longest batch seen: queries reach back that far
        self.entries: list[tuple[float, float, Vector, int]] = []  # (end, start, f, id)
        self.ends: list[float] = []
        self.cum: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self.ids: set[int] = set()


class EwmaHistory:
    """Finished batches per device, for the EWMA of the load before a batch's start when
    batches arrive one at a time (posterior mode). Co-runners present at the start but
    not finished yet have an unknown start: assumed to have run half their solo latency.
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
            dev = self._devices[record.device] = _DeviceHistory(record.end)
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
        for o in record.co_runners_at_start():
            if o.batch_id in ids:
                continue
            f = self.fmap.co_vec(o.model, o.batch_size)
            w = 1.0 - math.exp(-0.5 * self.fmap.solo(o.model, o.batch_size) / tau)
            n += w
            cu += f[1] * w
            mu += f[2] * w
        return (n, cu, mu)


# -- design rows -------------------------------------------------------------------------
class Design:
    """Turns (self features, co-load) into a regression row, optionally with interaction
    terms self x co-load (compute_util, memory_util, log solo) x (count, compute, memory).

    Every row is linear in the co-load for fixed self features, so the slowdown can be
    written a + beta . co_load: the forecaster relies on that (see `parts`)."""

    def __init__(self, n_load: int, interactions: bool):
        self.n_load = n_load
        self.interactions = interactions
        self.dim = 4 + n_load + (9 if interactions else 0)

    def names(self) -> list[str]:
        load = [*LOAD_NAMES, SQUARE_NAME][: self.n_load]
        names = [*SELF_NAMES, *load]
        if self.interactions:
            names += [f"{s}*{g}" for s in SELF_NAMES[1:] for g in LOAD_NAMES]
        return names

    def row(self, s: Vector, g: Vector) -> list[float]:
        r = [*s, *g]
        if self.interactions:
            g0, g1, g2 = g[0], g[1], g[2]
            for si in s[1:4]:
                r.append(si * g0)
                r.append(si * g1)
                r.append(si * g2)
        return r

    def parts(self, w: Sequence[float], s: Vector) -> tuple[float, Vector]:
        a = w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3]
        beta = list(w[4 : 4 + self.n_load])
        if self.interactions:
            k = 4 + self.n_load
            for si in s[1:4]:
                beta[0] += w[k] * si
                beta[1] += w[k + 1] * si
                beta[2] += w[k + 2] * si
                k += 3
        return a, tuple(beta)
