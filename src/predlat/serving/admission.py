"""Shedding at the door: refuse, before reading or decoding a body, a request that
cannot be served on time, and bound the work between arrival and answer.

What the door knows before the body: the model (URL), the in-flight count, and a deadline
and priority when the client sends them as headers (`predlat-deadline-ms`,
`predlat-priority`; else the model's default deadline). A request is refused when
- the in-flight budget is full (429, Retry-After: the server is busy, come back), or
- its deadline is shorter than the forecast of its fastest possible answer (503: waiting
  would not help; the forecast is the model's solo latency for everything queued plus it).

Late work, per model and per request (Triton's queue policy `timeout_action`):
REJECT (default) never starts work forecast to finish late (the scheduler refuses it);
DELAY runs it anyway once the scheduler refuses it, at low priority with a relaxed
deadline, and the answer counts as late.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority

REJECT, DELAY = "REJECT", "DELAY"
TIMEOUT_ACTIONS = (REJECT, DELAY)
DEADLINE_HEADER = "predlat-deadline-ms"
PRIORITY_HEADER = "predlat-priority"
# Reasons (metric labels) for refusals decided at the door.
BUDGET_FULL = "inflight_budget_full"
BELOW_FORECAST = "deadline_below_forecast"
PASSED_BEFORE_SUBMIT = "deadline_passed_before_submit"
LATE_FOR_DECODE = "deadline_passed_before_decode"
SHUTTING_DOWN = "shutting_down"

# Seconds a forecast takes for a model: queued requests -> fastest answer from now.
Forecast = Callable[[str], float | None]


@dataclass
class DoorPolicy:
    """`max_inflight`: requests between arrival and answer, all models (0: unbounded).
    `timeout_action`: per-model late-work policy (models missing: `default_action`);
    `allow_override`: models whose requests may choose theirs (`timeout_action` param).
    `delay_factor`: a DELAYed request's relaxed deadline, in multiples of its own.
    `high_reserve`: the fraction of the budget only high-priority requests may use (the
    priority the door knows from the `predlat-priority` header)."""

    max_inflight: int = 512
    high_reserve: float = 0.1
    retry_after_s: int = 1
    default_action: str = REJECT
    timeout_action: Mapping[str, str] = field(default_factory=dict)
    allow_override: frozenset[str] | None = None  # None: every model allows it
    delay_factor: float = 10.0

    def action_for(self, model: str, requested: str | None) -> str:
        allowed = self.allow_override is None or model in self.allow_override
        if requested is not None and allowed:
            return requested
        return self.timeout_action.get(model, self.default_action)


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # a metric label
    message: str
    retry_after_s: int | None = None

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


class Door:
    """The in-flight count and the refusals decided before decoding. Used from one event
    loop only (plain counters, no lock)."""

    def __init__(self, policy: DoorPolicy, forecast: Forecast | None = None) -> None:
        self.policy = policy
        self.forecast = forecast
        self.inflight = 0
        self.pending: dict[str, int] = {}  # per model

    def enter(self, model: str) -> None:
        self.inflight += 1
        self.pending[model] = self.pending.get(model, 0) + 1

    def leave(self, model: str) -> None:
        self.inflight -= 1
        self.pending[model] -= 1

    def check(
        self,
        model: str,
        deadline_s: float,
        max_queue: int = 0,
        decode_s: float = 0.0,
        priority: Priority | None = None,
    ) -> Refusal | None:
        """`max_queue`: the model's own cap on requests in flight (0: none); `decode_s`:
        the forecast wait for and in decoding the body (from its Content-Length);
        `priority`: when known before the body (None: treated as low)."""
        if max_queue and self.pending.get(model, 0) >= max_queue:
            return Refusal(
                429,
                "model_queue_full",
                f"queue of model '{model}' is full ({max_queue} requests, max_queue_size)",
                self.policy.retry_after_s,
            )
        limit = self.policy.max_inflight
        if limit and priority != Priority.HIGH:  # keep the reserve for high priority
            limit = max(1, int(limit * (1.0 - self.policy.high_reserve)))
        if limit and self.inflight >= limit:
            return Refusal(
                429,
                BUDGET_FULL,
                f"server busy: {self.inflight} requests in flight (budget {limit})",
                self.policy.retry_after_s,
            )
        run_s = self.forecast(model) if self.forecast is not None else None
        fastest = (run_s or 0.0) + decode_s
        if (run_s is not None or decode_s > 0) and deadline_s < fastest:
            decoding = f", {decode_s * 1e3:.1f} ms of it decoding" if decode_s > 0 else ""
            return Refusal(
                503,
                BELOW_FORECAST,
                f"deadline {deadline_s * 1e3:.1f} ms is shorter than the fastest forecast "
                f"answer for model '{model}' ({fastest * 1e3:.1f} ms{decoding})",
            )
        return None


def passed_before_submit(waited_s: float, deadline_s: float) -> Refusal:
    return Refusal(
        503,
        PASSED_BEFORE_SUBMIT,
        f"deadline of {deadline_s * 1e3:.1f} ms passed while the request was read and "
        f"decoded ({waited_s * 1e3:.1f} ms)",
    )


def late_for_decode(deadline_s: float | None, waited_s: float, decode_s: float) -> Refusal | None:
    """After the body is read, before decoding it: refuse when the deadline (one the body
    cannot change: from the headers) leaves less than the forecast decode time."""
    if deadline_s is None or deadline_s - waited_s >= decode_s:
        return None
    return Refusal(
        503,
        LATE_FOR_DECODE,
        f"deadline of {deadline_s * 1e3:.1f} ms: {waited_s * 1e3:.1f} ms went reading the "
        f"body, decoding it needs about {decode_s * 1e3:.1f} ms more",
    )


def header_deadline(headers: Mapping[str, str]) -> float | None:
    """`predlat-deadline-ms` (s), or None; a malformed value is ignored here (the body's
    parameters are checked strictly once decoded)."""
    text = headers.get(DEADLINE_HEADER)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value / 1e3 if value > 0 and value != float("inf") else None


def header_priority(headers: Mapping[str, str]) -> Priority | None:
    text = headers.get(PRIORITY_HEADER)
    if text is None or not text.strip().isdigit():
        return None
    return Priority.HIGH if int(text) == 1 else Priority.LOW


def is_deadline_rejection(outcome: Any) -> bool:
    """Whether the scheduler refused because the deadline cannot be met (DELAY applies),
    not because of shutdown or a full queue."""
    kind = getattr(outcome, "rejected_for", None)
    return kind in (RejectReason.DEADLINE, RejectReason.EXPIRED)


def profile_forecast(
    solo_latency: Callable[[str, int], float],
    queue_lengths: Callable[[], Mapping[str, int]],
    max_batch: int = 8,
    slots: int = 1,
) -> Forecast:
    """The fastest answer for a new request, optimistic on purpose (only the hopeless are
    refused at the door; the scheduler judges the rest): everything queued for its model
    plus it, in full batches spread over every slot, nothing else running."""

    def forecast(model: str) -> float | None:
        try:
            waiting = queue_lengths().get(model, 0) + 1
            batch = min(waiting, max_batch)
            rounds = math.ceil(math.ceil(waiting / max_batch) / max(1, slots))
            return rounds * solo_latency(model, batch)
        except Exception:  # a forecast must never fail a request: no opinion then
            return None

    return forecast
