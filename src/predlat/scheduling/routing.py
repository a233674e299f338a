"""Routing one request among devices by its forecast completion time.

Pure decision logic shared by every dispatcher that fronts several devices (the Ray
Serve router, a simulated cluster): given each device's forecast state (the Ray router
brings it up to date from its own ledger of requests in flight), rank the devices by
when *this* request (model, rows, priority, deadline) would finish there, put those that
meet its deadline first, and refuse with a reason when none can. No clock, no I/O, no Ray.

The completion forecast is deliberately simple: a device drains its forecast work
(running batches' remaining time, then queued work) over its slots; high-priority
requests wait only for running and high-priority queued work (the scheduler serves high
first). The request itself then takes its solo latency at its rows, stretched by the
device's current slowdown (co-location, as its predictor forecasts it).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from predlat.errors import ConfigError
from predlat.scheduling.request import Priority


@dataclass(frozen=True)
class DeviceForecast:
    """What one device publishes about itself. Seconds are forecast work (latency as the
    device's predictor expects it), not wall-clock time; `solo_s[model]` maps batch rows
    to solo latency (s), from the device's profile."""

    name: str
    slots: int
    solo_s: Mapping[str, Mapping[int, float]]
    running_s: float = 0.0  # remaining forecast time of running batches, summed
    backlog_s: Mapping[str, float] = field(default_factory=dict)  # queued work per model
    high_backlog_s: float = 0.0  # the part of the backlog that is high priority
    running_batches: int = 0
    queued: int = 0  # requests waiting
    high_queued: int = 0
    slowdown: Mapping[str, float] = field(default_factory=dict)  # per model, recent batches
    predictor_version: int = 0
    healthy: bool = True

    def serves(self, model: str) -> bool:
        return model in self.solo_s


@dataclass(frozen=True)
class RouteRequest:
    """The request to place. `deadline_s`: seconds from now."""

    model: str
    rows: int
    priority: Priority
    deadline_s: float


@dataclass(frozen=True)
class Candidate:
    name: str
    completion_s: float  # forecast seconds from now until this request finishes there
    meets: bool


@dataclass(frozen=True)
class RouteDecision:
    """Devices in the order to try them (deadline-meeting ones first, then by forecast
    completion), or empty with a `refusal` reason."""

    ranked: tuple[Candidate, ...]
    refusal: str | None = None

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None


def solo_latency(table: Mapping[int, float], rows: int) -> float:
    """Solo latency at `rows` from a table of profiled batch sizes: linear between
    neighbours, linear extrapolation past the largest (through the two largest)."""
    if not table:
        raise ConfigError("a device published no solo latencies for this model")
    sizes = sorted(table)
    if rows in table:
        return table[rows]
    if rows <= sizes[0]:
        return table[sizes[0]]
    if len(sizes) == 1:  # one point: proportional to rows
        return table[sizes[0]] * rows / sizes[0]
    i = min(bisect.bisect_left(sizes, rows), len(sizes) - 1)
    lo, hi = sizes[i - 1], sizes[i]
    slope = (table[hi] - table[lo]) / (hi - lo)
    return table[lo] + slope * (rows - lo)


def aged(device: DeviceForecast, age_s: float) -> DeviceForecast:
    """The device's state `age_s` after it was published: its slots kept working, on the
    running batches first, then on the queue in the scheduler's order (high priority
    first). Queued request counts shrink with the work they stand for."""
    if age_s <= 0:
        return device
    spare = age_s * device.slots
    ran = min(device.running_s, age_s * device.running_batches)
    running_s = device.running_s - ran
    spare -= ran
    high = min(device.high_backlog_s, spare)
    spare -= high
    total = sum(device.backlog_s.values())
    low_total = max(0.0, total - device.high_backlog_s)
    low = min(low_total, spare)
    keep_low = 1.0 - low / low_total if low_total > 0 else 0.0
    keep_high = 1.0 - high / device.high_backlog_s if device.high_backlog_s > 0 else 0.0
    left = total - high - low
    scale = left / total if total > 0 else 0.0
    high_queued = round(device.high_queued * keep_high)
    low_queued = round((device.queued - device.high_queued) * keep_low)
    return replace(
        device,
        running_s=running_s,
        running_batches=device.running_batches if running_s > 0 else 0,
        backlog_s={m: w * scale for m, w in device.backlog_s.items() if w * scale > 0},
        high_backlog_s=device.high_backlog_s - high,
        queued=high_queued + low_queued,
        high_queued=high_queued,
    )


def service_s(device: DeviceForecast, model: str, rows: int) -> float:
    """Forecast latency of `rows` of `model` on `device` given its current slowdown."""
    return solo_latency(device.solo_s[model], rows) * max(device.slowdown.get(model, 1.0), 1.0)


def completion_s(device: DeviceForecast, request: RouteRequest) -> float:
    """Forecast seconds until `request` would finish on `device`."""
    if request.priority == Priority.HIGH:
        ahead = device.running_s + device.high_backlog_s
        waiting = device.high_queued
    else:
        ahead = device.running_s + sum(device.backlog_s.values())
        waiting = device.queued
    # With a slot free even after everything ahead took one, the request starts now;
    # otherwise the work ahead drains over the slots first.
    free = device.running_batches + waiting < device.slots
    wait = 0.0 if free else ahead / device.slots
    return wait + service_s(device, request.model, request.rows)


def rank(devices: Sequence[DeviceForecast], request: RouteRequest) -> RouteDecision:
    """The devices forecast to meet `request`'s deadline, soonest completion first (ties
    by name, so the rule is deterministic). Refuses with a reason when no healthy device
    serves the model or none is forecast to meet the deadline."""
    refused = _precheck(devices, request)
    if refused is not None:
        return refused
    scored = _scored(devices, request)
    if not scored[0].meets:
        return RouteDecision((), _late_reason(request, scored))
    return RouteDecision(tuple(c for c in scored if c.meets))


def place(devices: Sequence[DeviceForecast], request: RouteRequest) -> RouteDecision:
    """Like `rank`, but every healthy device serving the model is offered (those forecast
    to meet the deadline first), and the request is refused only when no device could
    make it even at `lower_bound_s`. For a router whose view of a device is coarser and
    older than the device's own scheduler, which admits what it can still make: refusing
    on the forecast alone turns away work the device would have served."""
    refused = _precheck(devices, request)
    if refused is not None:
        return refused
    scored = _scored(devices, request)
    if scored[0].meets:
        return RouteDecision(tuple(scored))
    able = [d for d in devices if d.healthy and d.serves(request.model)]
    if any(lower_bound_s(d, request) <= request.deadline_s for d in able):
        return RouteDecision(tuple(scored))
    return RouteDecision((), _late_reason(request, scored))


def lower_bound_s(device: DeviceForecast, request: RouteRequest) -> float:
    """The soonest `request` could finish on `device` in any order its scheduler picks:
    only running batches (no preemption) and, for low priority, queued high-priority work
    surely go first; then it runs at its solo latency."""
    ahead = device.running_s if device.running_batches >= device.slots else 0.0
    if request.priority != Priority.HIGH:
        ahead += device.high_backlog_s
    return ahead / device.slots + solo_latency(device.solo_s[request.model], request.rows)


def _precheck(devices: Sequence[DeviceForecast], request: RouteRequest) -> RouteDecision | None:
    """A refusal that needs no forecast (or a clear error for a malformed request)."""
    if request.rows < 1:
        raise ConfigError(f"a request needs at least one row, got {request.rows}")
    if not math.isfinite(request.deadline_s):
        raise ConfigError(f"deadline must be finite, got {request.deadline_s}")
    if request.deadline_s <= 0:
        return RouteDecision((), f"the deadline of '{request.model}' has already passed")
    if any(d.healthy and d.serves(request.model) for d in devices):
        return None
    if not any(d.serves(request.model) for d in devices):
        return RouteDecision((), f"no device serves model '{request.model}'")
    return RouteDecision((), f"no healthy device serves model '{request.model}'")


def _scored(devices: Sequence[DeviceForecast], request: RouteRequest) -> list[Candidate]:
    """Healthy devices serving the model, deadline-meeting first, then soonest, then name."""
    scored = [
        Candidate(d.name, c, c <= request.deadline_s)
        for d in devices
        if d.healthy and d.serves(request.model)
        for c in (completion_s(d, request),)
    ]
    scored.sort(key=lambda c: (not c.meets, c.completion_s, c.name))
    return scored


def _late_reason(request: RouteRequest, scored: Sequence[Candidate]) -> str:
    best = scored[0]
    return (
        f"no device can meet the {request.deadline_s * 1e3:.1f} ms deadline of "
        f"'{request.model}' (best forecast {best.completion_s * 1e3:.1f} ms on "
        f"{best.name}, {len(scored)} device(s))"
    )


__all__ = [
    "Candidate",
    "DeviceForecast",
    "RouteDecision",
    "RouteRequest",
    "aged",
    "completion_s",
    "lower_bound_s",
    "place",
    "rank",
    "service_s",
    "solo_latency",
]
