"""Deadline-aware, interference-aware scheduling: pure decision logic, no clock."""

from predlat.scheduling.forecasting import FixedSlowdownForecaster, ForecasterLike
from predlat.scheduling.outcome import STATUSES, RequestOutcome, summarize
from predlat.scheduling.policies import POLICIES, POLICY_NAMES, Policy, get_policy
from predlat.scheduling.reasons import RejectReason, http_status
from predlat.scheduling.request import (
    Decision,
    Dispatch,
    Finished,
    Priority,
    Reject,
    Request,
    requests_from_arrivals,
)
from predlat.scheduling.scheduler import RunningInfo, Scheduler, SchedulerConfig, SchedulerStats

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "STATUSES",
    "Decision",
    "Dispatch",
    "Finished",
    "FixedSlowdownForecaster",
    "ForecasterLike",
    "Policy",
    "Priority",
    "Reject",
    "RejectReason",
    "Request",
    "RequestOutcome",
    "RunningInfo",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
    "get_policy",
    "http_status",
    "requests_from_arrivals",
    "summarize",
]
