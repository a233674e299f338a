"""The co-location state of a device and its views.

`DeviceLoad` is what a dispatcher knows about one device at any instant, kept up to date
by batch start and end events: the summed co-runner features (1, compute, memory) of the
running batches, their integrals over time and their EWMA. The views of the co-location a
batch sees (see predlat.predict.features for the features):

    coarse  the co-runners present when the batch starts (`coarse_view`)
    ewma    the EWMA (time constant tau) of the device's load before the start
    fine    the time average over the batch's lifetime (`predlat.predict.features.fine_load`
            after the fact; the forecaster integrates it ahead from `DeviceLoad.cum`)

Fitting replays start and end events through a `DeviceLoad` per device (`ewma_loads`),
and the forecaster keeps one per device: the EWMA a predictor is trained on is the one it
is asked about.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from predlat.predict.features import FeatureMap, Oversubscription, Vector
from predlat.traces.records import BatchRecord


def coarse_view(n: float, cu: float, mu: float, ov: Oversubscription | None) -> Vector:
    """The coarse co-load of a batch starting beside n co-runners of summed (cu, mu), with
    the oversubscription at that count if the machine has the channel."""
    return (n, cu, mu) if ov is None else (n, cu, mu, ov.at(int(n + 0.5)))


def coarse_load(record: BatchRecord, fmap: FeatureMap) -> Vector:
    """The coarse co-load of a finished batch: its co-runners present at its start."""
    n = cu = mu = 0.0
    for o in record.co_runners_at_start():
        f = fmap.co_vec(o.model, o.batch_size)
        n += 1.0
        cu += f[1]
        mu += f[2]
    return coarse_view(n, cu, mu, fmap.oversub)


class DeviceLoad:
    """One device's running set, as sums: `load` (1, cu, mu) summed over the running
    batches; `cum` its integrals over time (count, cu, mu) and that of oversub(count - 1)
    while any runs (what each running batch sees of it); `ewma` the EWMA (tau) of the
    load and of oversub(count). Call `advance(t)` before `start` / `end` at t."""

    __slots__ = ("cum", "ewma", "load", "ov", "t", "tau")

    def __init__(self, tau: float, ov: Oversubscription | None):
        self.tau = tau
        self.ov = ov
        self.load = [0.0, 0.0, 0.0]
        self.cum = [0.0, 0.0, 0.0, 0.0]
        self.ewma = [0.0, 0.0, 0.0, ov.zero if ov is not None else 0.0]
        self.t: float | None = None

    @property
    def count(self) -> int:
        return int(self.load[0] + 0.5)

    def advance(self, t: float) -> None:
        if self.t is None:
            self.t = t
            return
        dt = t - self.t
        if dt <= 0:
            return
        load, cum = self.load, self.cum
        cum[0] += load[0] * dt
        cum[1] += load[1] * dt
        cum[2] += load[2] * dt
        if self.ov is not None and self.count:
            cum[3] += self.ov.at(self.count - 1) * dt
        self.ewma = self._decayed(math.exp(-dt / self.tau))
        self.t = t

    def _decayed(self, decay: float) -> list[float]:
        load, ewma = self.load, self.ewma
        out = [load[i] + (ewma[i] - load[i]) * decay for i in range(3)]
        h = self.ov.at(self.count) if self.ov is not None else 0.0
        out.append(h + (ewma[3] - h) * decay)
        return out

    def start(self, f: Vector) -> None:
        load = self.load
        load[0] += 1.0
        load[1] += f[1]
        load[2] += f[2]

    def end(self, f: Vector) -> None:
        if self.count <= 1:
            self.load = [0.0, 0.0, 0.0]  # no drift from rounding
            return
        load = self.load
        load[0] -= 1.0
        load[1] -= f[1]
        load[2] -= f[2]

    def coarse(self, extra: Sequence[Vector] = ()) -> list[Vector]:
        """The coarse view of a batch starting now (none of `extra`), or of each of `extra`
        starting now together (each beside the running batches and the others)."""
        n, cu, mu = self.load
        if not extra:
            return [coarse_view(n, cu, mu, self.ov)]
        n += len(extra)
        for f in extra:
            cu += f[1]
            mu += f[2]
        return [coarse_view(n - 1.0, cu - f[1], mu - f[2], self.ov) for f in extra]

    def ewma_view(self, t: float | None = None) -> Vector:
        """The EWMA view at t (default: as of the last event), without advancing."""
        ewma = self.ewma
        if t is not None and self.t is not None and t > self.t:
            ewma = self._decayed(math.exp(-(t - self.t) / self.tau))
        return tuple(ewma) if self.ov is not None else tuple(ewma[:3])


def ewma_loads(records: Sequence[BatchRecord], fmap: FeatureMap, tau: float) -> dict[int, Vector]:
    """The EWMA view of every batch of `records` (knowing each batch's start and end), by
    replaying their start and end events through a `DeviceLoad` per device. For fitting.
    An idle device has load 0 and oversub(0)."""
    out: dict[int, Vector] = {}
    by_device: dict[int, list[BatchRecord]] = {}
    for r in records:
        by_device.setdefault(r.device, []).append(r)
    for recs in by_device.values():
        # (time, order): a batch's view is read before the changes at its start; the
        # EWMA is continuous in time, so the order only has to be consistent.
        events = []
        for r in recs:
            events.append((r.start, 0, r))
            events.append((r.start, 1, r))
            events.append((r.end, 2, r))
        events.sort(key=lambda e: (e[0], e[1]))
        state = DeviceLoad(tau, fmap.oversub)
        for t, kind, r in events:
            state.advance(t)
            if kind == 0:
                out[r.batch_id] = state.ewma_view()
            elif kind == 1:
                state.start(fmap.co_vec(r.model, r.batch_size))
            else:
                state.end(fmap.co_vec(r.model, r.batch_size))
    return out
