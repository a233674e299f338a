"""Arrival processes (Poisson, bursty, trace replay)."""

from predlat.workload.arrivals import (
    PROCESSES,
    Arrival,
    bursty_times,
    open_loop_workload,
    poisson_times,
    replay_workload,
)

__all__ = [
    "PROCESSES",
    "Arrival",
    "bursty_times",
    "open_loop_workload",
    "poisson_times",
    "replay_workload",
]
