"""A replica's routing state: what it publishes through Serve's routing-stats hook, and
how a router reads it back. Pure Python (no Ray), so it is tested without a cluster.

The replica counts its own outstanding requests (submitted, not yet answered) per model
and priority; the scheduler's running batches say which of them run now and when they
are forecast to end. What is not running is queued: its work is forecast as full
batches at the profile's solo latency, stretched by the slowdown the model's recent
batches showed. It also publishes how wrong its own forecasts of recent batches were
(their mean relative error, as the live forecast error is reported everywhere in
predlat, and the median ratio of actual to forecast: above 1, they run late), so a router
or an operator can tell when a replica's forecasts stop holding, e.g. on a machine whose
cores it shares.
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from predlat.profiling.profile import Profile
from predlat.scheduling.request import Priority
from predlat.scheduling.routing import DeviceForecast, aged, solo_latency
from predlat.scheduling.scheduler import RunningInfo
from predlat.traces.records import BatchRecord

# EWMA weight of the newest batch's observed log-slowdown: a geometric mean, so the
# estimate follows the typical batch rather than the odd stalled one.
SLOWDOWN_WEIGHT = 0.1
ERROR_WINDOW = 256  # recent batches whose forecast error is published


@dataclass
class ReplicaState:
    """Per-replica bookkeeping behind the published routing stats (thread-safe: requests
    arrive on the replica's event loop, batches finish on the runtime's thread)."""

    name: str
    slots: int
    max_batch: int
    solo_s: dict[str, dict[int, float]]
    outstanding: dict[tuple[str, Priority], int] = field(default_factory=dict)  # rows
    log_slowdown: dict[str, float] = field(default_factory=dict)  # per model
    batches: int = 0
    seq: int = 0  # bumped at every publication, so a router knows its state is fresh
    # actual / forecast latency of recent batches (the forecast made at dispatch)
    ratios: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=ERROR_WINDOW)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, name: str, profile: Profile, models: Sequence[str], slots: int, max_batch: int):
        solo = {m: {n: profile.solo_latency(m, n) for n in profile.batch_sizes(m)} for m in models}
        return cls(name, slots, max_batch, solo)

    def arrived(self, model: str, priority: Priority, rows: int) -> None:
        with self._lock:
            key = (model, priority)
            self.outstanding[key] = self.outstanding.get(key, 0) + rows

    def answered(self, model: str, priority: Priority, rows: int) -> None:
        with self._lock:
            key = (model, priority)
            self.outstanding[key] = max(0, self.outstanding.get(key, 0) - rows)

    def on_batch(self, record: BatchRecord, forecast_s: float) -> None:
        """A finished batch: fold its observed slowdown into the running estimate."""
        table = self.solo_s.get(record.model)
        if not table:
            return
        solo = solo_latency(table, record.batch_size)
        observed = (record.end - record.start) / solo if solo > 0 else 1.0
        sample = math.log(max(observed, 1.0))
        # From the decision to the batch's end, as the forecast is made (the hand-off to
        # the slot included: on a shared core, the slot thread may wait for one).
        actual = record.end - record.dispatch
        with self._lock:
            last = self.log_slowdown.get(record.model, sample)
            self.log_slowdown[record.model] = last + SLOWDOWN_WEIGHT * (sample - last)
            self.batches += 1
            if actual > 0 and forecast_s > 0:
                self.ratios.append(actual / forecast_s)

    def publish(self, running: Sequence[RunningInfo], now: float) -> dict[str, Any]:
        """The routing stats dict (JSON-able) for Serve's `record_routing_stats`."""
        with self._lock:
            queued = dict(self.outstanding)
            slowdown = {m: math.exp(v) for m, v in self.log_slowdown.items()}
            batches = self.batches
            ratios = list(self.ratios)
            self.seq += 1
            seq = self.seq
        running_s = 0.0
        for batch in running:
            running_s += max(0.0, batch.predicted_mean_end - now)
            for r in batch.requests:
                key = (r.model, r.priority)
                queued[key] = max(0, queued.get(key, 0) - r.size)
        backlog: dict[str, float] = {}
        high_backlog, high_queued = 0.0, 0
        for (model, priority), rows in queued.items():
            if rows <= 0 or model not in self.solo_s:
                continue
            work = self._work(model, rows) * slowdown.get(model, 1.0)
            backlog[model] = backlog.get(model, 0.0) + work
            if priority == Priority.HIGH:
                high_backlog += work
                high_queued += rows
        return {
            "name": self.name,
            "seq": seq,
            "time": time.time(),
            "slots": self.slots,
            "max_batch": self.max_batch,
            "solo_s": {m: {str(n): s for n, s in t.items()} for m, t in self.solo_s.items()},
            "running_s": running_s,
            "running_batches": len(running),
            "backlog_s": backlog,
            "high_backlog_s": high_backlog,
            "queued": sum(r for r in queued.values() if r > 0),
            "high_queued": high_queued,
            "slowdown": slowdown,
            "predictor_version": batches,
            # |forecast - actual| / actual = |1 - 1 / ratio|
            "forecast_error": statistics.fmean(abs(1 - 1 / r) for r in ratios) if ratios else None,
            "forecast_ratio": statistics.median(ratios) if ratios else None,
        }

    def _work(self, model: str, rows: int) -> float:
        return batched_work(self.solo_s[model], rows, self.max_batch)


def batched_work(table: Mapping[int, float], rows: int, max_batch: int) -> float:
    """Solo time of `rows` queued rows run as full batches of `max_batch`."""
    full, rest = divmod(rows, max_batch)
    work = full * solo_latency(table, max_batch) if full else 0.0
    return work + (solo_latency(table, rest) if rest else 0.0)


def device_forecast(
    stats: Mapping[str, Any], name: str | None = None, now: float | None = None
) -> DeviceForecast:
    """Read published routing stats back (what a router does with a replica's dict).
    Given `now` (time.time()), the state is aged to it: the replica kept working since
    it published (Serve relays stats with a delay of a period or more)."""
    solo = {m: {int(n): float(s) for n, s in t.items()} for m, t in stats["solo_s"].items()}
    forecast = DeviceForecast(
        name=name or str(stats["name"]),
        slots=int(stats["slots"]),
        solo_s=solo,
        running_s=float(stats["running_s"]),
        backlog_s={m: float(v) for m, v in stats["backlog_s"].items()},
        high_backlog_s=float(stats["high_backlog_s"]),
        running_batches=int(stats["running_batches"]),
        queued=int(stats["queued"]),
        high_queued=int(stats["high_queued"]),
        slowdown={m: float(v) for m, v in stats["slowdown"].items()},
        predictor_version=int(stats["predictor_version"]),
    )
    return forecast if now is None else aged(forecast, now - float(stats["time"]))
