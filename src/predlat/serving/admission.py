"""Shedding at the door: refuse, before reading or decoding a body, a request that
cannot be served on time, and bound the work between arrival and answer.

What the door knows before the body: the model (URL), the in-flight count, and a deadline
and priority when the client sends them as headers (`predlat-deadline-ms`,
`predlat-priority`; else the model's default deadline). A request is refused when
- the in-flight budget is full (429, Retry-After: the server is busy, come back), or
- its deadline is shorter than the forecast time to its answer (503, Retry-After: the
  backlog drains). The forecast (backlog.py) lays the work ahead of it at its priority
  (requests let in and not answered, the scheduler's running batches) on the slots, adds
  its own batch and decoding, and is calibrated online against the answers of the
  requests let in, so that those let in are answered on time at a high quantile.

Late work, per model and per request (Triton's queue policy `timeout_action`):
REJECT (default) never starts work forecast to finish late (the scheduler refuses it);
DELAY runs it anyway once the scheduler refuses it, at low priority with a relaxed
deadline, and the answer counts as late.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority
from predlat.serving.backlog import BacklogForecast, LoopLag, Waiting

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
LEARN_FROM = 1 / 3  # the door learns from answers forecast past this share of the deadline

# Seconds until a new request would be answered: (model, priority, requests the door let
# in and has not answered yet, per model and priority) -> seconds, or None (no opinion).
Forecast = Callable[[str, Priority, Waiting], float | None]


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


@dataclass
class Ticket:
    """A request the door let in: what it counts and what it forecast (`forecast_s`: the
    uncalibrated seconds to its answer, decoding included; None: no forecast)."""

    model: str
    priority: Priority
    forecast_s: float | None = None


class Door:
    """The in-flight counts and the refusals decided before decoding. Used from one event
    loop (plain counters, no lock; gRPC and HTTP share the loop)."""

    def __init__(
        self, policy: DoorPolicy, forecast: BacklogForecast | Forecast | None = None
    ) -> None:
        """`forecast`: a BacklogForecast (calibrated online from what the door lets in),
        or any Forecast callable (used as it is)."""
        self.policy = policy
        self.forecast = forecast
        self.inflight = 0
        self.pending: dict[str, int] = {}  # per model
        self.waiting: dict[tuple[str, Priority], int] = {}  # per model and priority
        # Added to a BacklogForecast's forecasts: time outside the handler's clock (the
        # server starts it on its loop).
        self.loop_lag = LoopLag()

    def enter(self, model: str, priority: Priority | None = None) -> Ticket:
        key = (model, Priority.LOW if priority is None else priority)
        self.inflight += 1
        self.pending[model] = self.pending.get(model, 0) + 1
        self.waiting[key] = self.waiting.get(key, 0) + 1
        return Ticket(*key)

    def leave(self, ticket: Ticket, answered_s: float | None = None) -> None:
        """`answered_s`: seconds from arrival to the answer of a request that ran (or, for
        one refused after the door, a lower bound: its deadline); None teaches nothing."""
        self.inflight -= 1
        self.pending[ticket.model] -= 1
        self.waiting[(ticket.model, ticket.priority)] -= 1
        learner = self.forecast
        if isinstance(learner, BacklogForecast) and ticket.forecast_s and answered_s is not None:
            learner.observe(ticket.forecast_s, answered_s)

    @property
    def scale(self) -> float:
        """The calibration applied to forecasts (1 without a BacklogForecast)."""
        return self.forecast.scale if isinstance(self.forecast, BacklogForecast) else 1.0

    def admit(
        self,
        model: str,
        deadline_s: float,
        max_queue: int = 0,
        decode_s: float = 0.0,
        priority: Priority | None = None,
    ) -> Refusal | Ticket:
        """`check`, then `enter` when the request may come in (its ticket keeps the
        forecast, for calibration)."""
        refusal, raw = self._judge(model, deadline_s, max_queue, decode_s, priority)
        if refusal is not None:
            return refusal
        ticket = self.enter(model, priority)
        ticket.forecast_s = raw
        return ticket

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
        return self._judge(model, deadline_s, max_queue, decode_s, priority)[0]

    def _judge(
        self, model: str, deadline_s: float, max_queue: int, decode_s: float, p: Priority | None
    ) -> tuple[Refusal | None, float | None]:
        """(the refusal or None, the raw forecast the answer should teach or None)."""
        full = self._full(model, max_queue, p)
        if full is not None:
            return full, None
        raw, scale, idle = self._forecast(model, Priority.LOW if p is None else p)
        fastest = ((raw or 0.0) + decode_s) * scale
        if raw is not None and isinstance(self.forecast, BacklogForecast):
            fastest += self.loop_lag.value  # unseen by the answers it learns from: unscaled
        if (raw is not None or decode_s > 0) and deadline_s < fastest:
            decoding = f", {decode_s * 1e3:.1f} ms of it decoding" if decode_s > 0 else ""
            return Refusal(
                503,
                BELOW_FORECAST,
                f"deadline {deadline_s * 1e3:.1f} ms is shorter than the forecast answer for "
                f"model '{model}' ({fastest * 1e3:.1f} ms{decoding})",
                self.policy.retry_after_s,
            ), None
        # Teach only with answers near the deadline (where the door's decisions lie) or
        # with nothing ahead (the first admissions after the door shut everyone out).
        teach = raw is not None and (idle or fastest >= LEARN_FROM * deadline_s)
        return None, raw + decode_s if teach and raw is not None else None

    def _full(self, model: str, max_queue: int, priority: Priority | None) -> Refusal | None:
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
        return None

    def _forecast(self, model: str, priority: Priority) -> tuple[float | None, float, bool]:
        """(the forecast seconds to the answer, the calibration scale to apply, whether
        nothing waits ahead). Nothing ahead: unscaled, so a door that has learnt to
        refuse everyone still lets some in, and learns again from them."""
        f = self.forecast
        if f is None:
            return None, 1.0, False
        if isinstance(f, BacklogForecast):
            raw = f.raw(model, priority, self.waiting)
            idle = f.nothing_ahead(priority, self.waiting)
            return raw, 1.0 if idle else f.scale, idle
        return f(model, priority, self.waiting), 1.0, False


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


def answered_after(status: int, arrived: float, deadline_s: float) -> float | None:
    """What a request let in teaches the door: its time to answer when it ran; its
    deadline (a lower bound) when it was refused as late after the door; else nothing."""
    if status == 200:
        return perf_counter() - arrived
    return deadline_s if status == 503 else None


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
