"""The scheduler's configuration, counters and view of its running batches."""

from __future__ import annotations

from dataclasses import dataclass

from predlat.errors import require
from predlat.scheduling.request import Request


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8  # rows per batch (a single larger request still runs, alone)
    max_queue: int = 1000  # queued requests over all models
    margin_s: float = 0.0  # reserve taken off every deadline (dispatch lag, hand-offs)
    # Slots low-priority-only batches leave free while high-priority requests keep
    # arriving (one arrived within `high_window_s`): a high-priority request then finds a
    # slot at once instead of queueing behind long low-priority batches (no preemption).
    high_reserve: int = 1
    high_window_s: float = 1.0
    # Forecasts one event may make before it yields: the round goes on at once on a
    # timer (`next_wakeup` asks for it at the same instant) and decides as it would
    # have in one go, so no single event holds the scheduler long. 0: no limit. One by
    # default: a fine forecast costs tens of microseconds in Python, and a completion
    # under load would otherwise try a dozen candidates in one call.
    max_forecasts: int = 1

    def validate(self) -> None:
        require(self.max_batch >= 1, f"max batch must be at least 1, got {self.max_batch}")
        require(self.max_queue >= 1, f"max queue must be at least 1, got {self.max_queue}")
        require(self.margin_s >= 0, f"deadline margin must be non-negative, got {self.margin_s}")
        require(
            self.max_forecasts >= 0,
            f"max forecasts must be non-negative, got {self.max_forecasts}",
        )
        require(
            self.high_reserve >= 0, f"high reserve must be non-negative, got {self.high_reserve}"
        )


@dataclass
class SchedulerStats:
    arrivals: int = 0
    dispatched: int = 0  # batches
    finished: int = 0  # batches
    rejected: int = 0  # requests
    forecasts: int = 0  # forecaster calls (the main cost of a decision)
    learned: int = 0  # finished batches the forecaster has learned from


@dataclass
class RunningInfo:
    """A batch the scheduler dispatched and has not yet seen finish."""

    batch_id: int
    slot: int
    model: str
    batch_size: int
    requests: tuple[Request, ...]
    deadline: float  # the earliest deadline among its requests
    start: float  # dispatch time
    predicted_end: float
    predicted_mean_end: float
    high: bool  # holds at least one high-priority request
    late: bool = False  # forecast to miss its deadline whatever is added beside it
