"""EWMA of a device's load before a batch's start, from finished batches only (posterior
mode: batches arrive one at a time, each with its timeline). Fitting, which knows every
batch at once, uses `predlat.predict.colocation.ewma_loads`; forecasting keeps the EWMA
of the running set (`predlat.predict.colocation.DeviceLoad`)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise

from predlat.predict.features import FeatureMap, Oversubscription, Vector
from predlat.traces.records import BatchRecord


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
