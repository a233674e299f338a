"""Requests and the decisions a scheduler hands back to whoever drives it."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from predlat.scheduling.reasons import RejectReason
from predlat.traces.records import BatchRecord
from predlat.workload.arrivals import Arrival


class Priority(enum.IntEnum):
    """Lower value = more important (so sorting puts high priority first)."""

    HIGH = 0
    LOW = 1


@dataclass
class Request:
    """One inference request. Times are absolute seconds on the device clock."""

    request_id: int
    model: str
    arrival: float
    deadline: float
    priority: Priority = Priority.LOW
    size: int = 1  # rows this request contributes to a batch (first axis)


@dataclass(frozen=True)
class Dispatch:
    """Run these requests of `model` as one batch on `slot`, now."""

    batch_id: int
    slot: int
    model: str
    request_ids: tuple[int, ...]
    batch_size: int  # rows
    decided_at: float
    predicted_end: float  # the forecast the decision relied on (mean or quantile, per policy)
    predicted_mean_end: float

    @property
    def predicted_latency(self) -> float:
        return self.predicted_mean_end - self.decided_at


@dataclass(frozen=True)
class Reject:
    """This request will not be run; `kind` says why, `reason` in words for the client
    (it starts with `kind.value`)."""

    request_id: int
    reason: str
    kind: RejectReason


@dataclass(frozen=True)
class Finished:
    """A batch ended (`ok` False if the engine failed). `record` carries its timeline;
    `predicted_latency` is the mean forecast made when it was dispatched."""

    record: BatchRecord
    request_ids: tuple[int, ...]
    predicted_latency: float
    ok: bool = True


Decision = Dispatch | Reject | Finished


def requests_from_arrivals(
    arrivals: Iterable[Arrival],
    deadline_s: Callable[[str], float],
    start: float = 0.0,
    first_id: int = 0,
) -> list[Request]:
    """Requests for an open-loop workload: arrival at `start + a.time`, deadline
    `deadline_s(model)` seconds later, high priority where the arrival says so."""
    out: list[Request] = []
    for i, a in enumerate(arrivals):
        arrival = start + a.time
        out.append(
            Request(
                first_id + i,
                a.model,
                arrival,
                arrival + deadline_s(a.model),
                Priority.HIGH if a.high_priority else Priority.LOW,
            )
        )
    return out
