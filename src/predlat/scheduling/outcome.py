"""How each request ended, and the summary metrics of many requests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority, Request
from predlat.traces.records import BatchRecord

STATUSES = ("met", "missed", "rejected", "failed")
_NOT_RUN = (None, None, None, None, None)  # dispatch, start, end, batch_id, batch_size


@dataclass
class RequestOutcome:
    """The end of one request, exactly once. Times are device-clock seconds."""

    request_id: int
    model: str
    priority: Priority
    status: str  # "met" | "missed" | "rejected" | "failed"
    reason: str | None  # why rejected or failed (human readable)
    outputs: dict[str, np.ndarray] | None  # this request's rows of the batch outputs
    arrival: float
    deadline: float
    dispatch: float | None = None
    start: float | None = None
    end: float | None = None
    batch_id: int | None = None
    batch_size: int | None = None
    rejected_for: RejectReason | None = None  # the kind of `reason`, when rejected

    @classmethod
    def ran(
        cls,
        request: Request,
        record: BatchRecord,
        ok: bool = True,
        reason: str | None = None,
        outputs: dict[str, np.ndarray] | None = None,
    ) -> RequestOutcome:
        """A request whose batch ran: met or missed by the batch's end, or failed (`ok`
        False, with the engine's `reason`)."""
        return cls._of(request, ran_status(request, record.end, ok), reason, outputs, record)

    @classmethod
    def unrun(
        cls, request: Request, status: str, reason: str, kind: RejectReason | None = None
    ) -> RequestOutcome:
        """A request that never ran (rejected, for `kind`, or failed before it could)."""
        return cls._of(request, status, reason, None, None, kind)

    @classmethod
    def _of(
        cls,
        request: Request,
        status: str,
        reason: str | None,
        outputs: dict[str, np.ndarray] | None,
        record: BatchRecord | None,
        kind: RejectReason | None = None,
    ) -> RequestOutcome:
        """The one place a request's and its batch's fields are copied into an outcome."""
        if record is None:
            ran: tuple[float | int | None, ...] = _NOT_RUN
        else:
            ran = (record.dispatch, record.start, record.end, record.batch_id, record.batch_size)
        head = (request.request_id, request.model, request.priority, status, reason, outputs)
        return cls(*head, request.arrival, request.deadline, *ran, kind)

    @property
    def latency(self) -> float | None:
        """End-to-end latency (arrival to end of its batch), None if it never ran."""
        return None if self.end is None else self.end - self.arrival

    @property
    def finished(self) -> bool:
        return self.status in ("met", "missed")


def ran_status(request: Request, end: float, ok: bool) -> str:
    """How a request whose batch ran until `end` ended: met or missed its deadline, or
    failed (`ok` False)."""
    return ("met" if end <= request.deadline else "missed") if ok else "failed"


def summarize(
    outcomes: Iterable[RequestOutcome],
    duration_s: float,
    busy_slot_s: float | None = None,
    slots: int | None = None,
) -> dict[str, float]:
    """Deadline satisfaction per priority (over ALL requests of that priority, so
    rejected and failed ones count as missed), goodput (met per second), throughput
    (finished per second), latency percentiles of finished requests, rejection rate and,
    given busy slot-seconds and the slot count, utilization."""
    outs = list(outcomes)
    duration_s = max(duration_s, 1e-9)
    counts = {s: 0 for s in STATUSES}
    by_priority = {p: [0, 0] for p in Priority}  # [met, total]
    latencies: list[float] = []
    for o in outs:
        counts[o.status] += 1
        by_priority[o.priority][1] += 1
        if o.status == "met":
            by_priority[o.priority][0] += 1
        if o.finished and o.latency is not None:
            latencies.append(o.latency)
    n = len(outs)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    result = {
        "requests": float(n),
        "met": float(counts["met"]),
        "missed": float(counts["missed"]),
        "rejected": float(counts["rejected"]),
        "failed": float(counts["failed"]),
        "met_frac": counts["met"] / n if n else float("nan"),
        "hp_requests": float(by_priority[Priority.HIGH][1]),
        "lp_requests": float(by_priority[Priority.LOW][1]),
        "hp_met": _frac(*by_priority[Priority.HIGH]),
        "lp_met": _frac(*by_priority[Priority.LOW]),
        "goodput_rps": counts["met"] / duration_s,
        "throughput_rps": (counts["met"] + counts["missed"]) / duration_s,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "rejected_frac": counts["rejected"] / n if n else float("nan"),
    }
    if busy_slot_s is not None and slots:
        result["utilization"] = busy_slot_s / (slots * duration_s)
    return result


def _frac(met: int, total: int) -> float:
    return met / total if total else float("nan")
