"""Streaming metrics: every request's end folded into counters and a latency histogram
as it happens, so a simulation's memory does not grow with its request count. Outcomes
and batch records are kept only when asked (`keep=True`).

The histogram's bins grow by 0.1 % from 1 us, so percentiles are exact to 0.1 %."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from predlat.scheduling.outcome import RequestOutcome, ran_status
from predlat.scheduling.request import Priority, Request
from predlat.traces.records import BatchRecord

_RATIO = math.log(1.001)
_LOW = 1e-6


@dataclass
class StreamStats:
    keep: bool = False
    requests: int = 0
    status: dict[str, int] = field(
        default_factory=lambda: {"met": 0, "missed": 0, "rejected": 0, "failed": 0}
    )
    hp_met: int = 0
    hp_requests: int = 0
    first_arrival: float = math.inf
    last_time: float = -math.inf
    batches: int = 0
    rows: int = 0
    # forecast error summed per device, added up in device order by `summary`: the
    # same figure, to the last bit, whether the devices ran in one process or in shards
    err_sum: dict[int, float] = field(default_factory=dict)
    err_n: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    outcomes: list[RequestOutcome] = field(default_factory=list)
    records: list[BatchRecord] = field(default_factory=list)

    # the simulator writes `loop.outcomes[request_id] = outcome`: accept it as a sink
    def __setitem__(self, request_id: int, o: RequestOutcome) -> None:
        self.add(o)

    def __len__(self) -> int:
        return self.requests

    def add(self, o: RequestOutcome) -> None:
        self._count(o.status, o.priority, o.arrival, o.end)
        if self.keep:
            self.outcomes.append(o)

    def ran(self, request: Request, record: BatchRecord, ok: bool, reason: str | None) -> None:
        """`add(RequestOutcome.ran(request, record, ok, reason))`, without making the
        outcome unless it is kept (one object fewer per request)."""
        if self.keep:
            self.add(RequestOutcome.ran(request, record, ok, reason))
            return
        end = record.end
        self._count(ran_status(request, end, ok), request.priority, request.arrival, end)

    def _count(self, status: str, priority: Priority, arrival: float, end: float | None) -> None:
        self.requests += 1
        self.status[status] += 1
        if priority == Priority.HIGH:
            self.hp_requests += 1
            self.hp_met += status == "met"
        if arrival < self.first_arrival:
            self.first_arrival = arrival
        last = arrival if end is None else end
        if last > self.last_time:
            self.last_time = last
        if end is not None and (status == "met" or status == "missed"):
            lat = max(end - arrival, _LOW)
            b = int(math.log(lat / _LOW) / _RATIO)
            self.hist[b] = self.hist.get(b, 0) + 1

    def add_batch(self, record: BatchRecord, predicted: float) -> None:
        self.batches += 1
        self.rows += record.batch_size
        if record.latency > 0:
            err = abs(predicted - record.latency) / record.latency
            self.err_sum[record.device] = self.err_sum.get(record.device, 0.0) + err
            self.err_n += 1
        if self.keep:
            self.records.append(record)

    def merge(self, other: StreamStats) -> None:
        """Fold in the stats of other devices of the same run (a shard of its cluster:
        `predlat.sim.shard`). Kept outcomes and records are appended, not interleaved."""
        if self.err_sum.keys() & other.err_sum.keys():
            raise ValueError("merged stats must come from disjoint devices")
        self.requests += other.requests
        for k, v in other.status.items():
            self.status[k] += v
        self.hp_met += other.hp_met
        self.hp_requests += other.hp_requests
        self.first_arrival = min(self.first_arrival, other.first_arrival)
        self.last_time = max(self.last_time, other.last_time)
        self.batches += other.batches
        self.rows += other.rows
        self.err_sum.update(other.err_sum)
        self.err_n += other.err_n
        for b, c in other.hist.items():
            self.hist[b] = self.hist.get(b, 0) + c
        self.outcomes.extend(other.outcomes)
        self.records.extend(other.records)

    def percentile(self, q: float) -> float:
        """Latency (s) at percentile q (0..100) of finished requests; NaN if none."""
        total = sum(self.hist.values())
        if not total:
            return math.nan
        rank = q / 100 * (total - 1)
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen > rank:
                return _LOW * math.exp((b + 0.5) * _RATIO)
        return math.nan

    def _err_sum(self) -> float:
        return sum(self.err_sum[d] for d in sorted(self.err_sum))

    def summary(self, busy_slot_s: float, slots: int) -> dict[str, float]:
        """The compare command's per-run metrics (METRIC_KEYS). Lags are not measured
        here (0): a simulated batch starts at its decision plus its device's constant
        dispatch hand-off (`InterferenceLaw.dispatch_s`, zero by default)."""
        n = self.requests
        span = max(self.last_time - self.first_arrival, 1e-9) if n else 1e-9
        met = self.status["met"]
        lp_n = n - self.hp_requests
        return {
            "requests": float(n),
            "hp_requests": float(self.hp_requests),
            "hp_met": self.hp_met / self.hp_requests if self.hp_requests else math.nan,
            "lp_met": (met - self.hp_met) / lp_n if lp_n else math.nan,
            "met_frac": met / n if n else math.nan,
            "goodput_rps": met / span,
            "throughput_rps": (met + self.status["missed"]) / span,
            "p50_ms": self.percentile(50) * 1e3,
            "p99_ms": self.percentile(99) * 1e3,
            "rejected_frac": self.status["rejected"] / n if n else math.nan,
            "utilization": busy_slot_s / (slots * span) if slots else math.nan,
            "pred_mean_rel_err": self._err_sum() / self.err_n if self.err_n else math.nan,
            "dispatch_lag_p50_ms": 0.0,
            "dispatch_lag_p99_ms": 0.0,
            "mean_batch_size": self.rows / self.batches if self.batches else math.nan,
            "submit_lag_p99_ms": 0.0,
            "span_s": span,
        }
