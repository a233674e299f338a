"""The simulator: simulated devices driven by schedulers on a virtual clock.

One event loop (heapq) over three kinds of events: request arrivals, batch ends on any
device, and scheduler timers. Each device has its own scheduler (and forecaster), as it
would on a real machine; requests are routed to devices as they arrive. The run is
deterministic: same requests, devices and seeds give the same outcomes.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

from predlat.devices.base import BatchJob, BatchResult
from predlat.devices.simulated import InterferenceLaw, SimulatedDevice, VirtualClock
from predlat.errors import ConfigError
from predlat.profiling.profile import Profile
from predlat.scheduling.forecasting import ForecasterLike
from predlat.scheduling.outcome import RequestOutcome, summarize
from predlat.scheduling.policies import get_policy
from predlat.scheduling.request import Dispatch, Finished, Reject, Request
from predlat.scheduling.scheduler import Scheduler, SchedulerConfig
from predlat.traces.records import BatchRecord

ROUTES = ("round-robin", "least-loaded")


@dataclass
class SimResult:
    outcomes: list[RequestOutcome]  # one per request, by request id
    records: list[BatchRecord]  # finished batches, with timelines, in end order
    predicted: list[float]  # mean latency forecast at dispatch, aligned with `records`
    duration: float  # first arrival to the later of last arrival and last end (s)
    busy_slot_s: float
    slots: int  # over all devices
    events: int
    wall_s: float
    dispatches: list[Dispatch] = field(default_factory=list)  # aligned with `records`

    def summary(self) -> dict[str, float]:
        out = summarize(self.outcomes, self.duration, self.busy_slot_s, self.slots)
        errors = [
            abs(p - r.latency) / r.latency
            for p, r in zip(self.predicted, self.records, strict=True)
            if r.latency > 0
        ]
        out["pred_mean_rel_err"] = sum(errors) / len(errors) if errors else math.nan
        out["batches"] = float(len(self.records))
        out["mean_batch_size"] = (
            sum(r.batch_size for r in self.records) / len(self.records)
            if self.records
            else math.nan
        )
        return out


@dataclass
class _Loop:
    """Per-run state (kept off the Simulation so a Simulation object stays reusable).

    The heap holds (time, kind, device, version) entries; per kind and device only the
    entry with the current version is valid (older ones are skipped when they surface),
    and `armed` is its time, so re-arming at an unchanged time pushes nothing."""

    devices: int = 1
    pending: dict[int, Request] = field(default_factory=dict)  # queued or running, by id
    outcomes: dict[int, RequestOutcome] = field(default_factory=dict)
    records: list[BatchRecord] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)
    heap: list[tuple[float, int, int, int]] = field(default_factory=list)
    events: int = 0
    ended: list[Dispatch] | None = None  # each finished batch's dispatch, when kept
    versions: list[list[int]] = field(init=False)  # [kind][device]
    armed: list[list[float | None]] = field(init=False)  # [kind][device]

    def __post_init__(self) -> None:
        self.versions = [[0] * self.devices, [0] * self.devices]
        self.armed = [[None] * self.devices, [None] * self.devices]


_DEVICE, _TIMER = 0, 1


class Simulation:
    routes: tuple[str, ...] = ROUTES  # the front dispatcher's rules this class knows
    # A shard of a larger cluster (`predlat.sim.shard`) sets these two as the whole
    # cluster has them: the index its first device has there (its records carry it),
    # and the host's arrival hand-off (None: the largest of its own devices' laws').
    first_device: int = 0
    arrival_s: float | None = None

    def __init__(
        self,
        devices: Sequence[SimulatedDevice],
        schedulers: Sequence[Scheduler],
        clock: VirtualClock,
        route: str = "round-robin",
    ) -> None:
        if len(devices) != len(schedulers) or not devices:
            raise ConfigError("a simulation needs one scheduler per device, and a device")
        if route not in self.routes:
            raise ConfigError(f"unknown route '{route}' (choose {', '.join(self.routes)})")
        if any(d.clock is not clock for d in devices):
            raise ConfigError("every simulated device must share the simulation's clock")
        self.devices = list(devices)
        self.schedulers = list(schedulers)
        self.clock = clock
        self.route = route

    def run(
        self,
        requests: Sequence[Request],
        on_progress: Callable[[int], None] | None = None,
    ) -> SimResult:
        """Simulate until every request has ended. `requests` are sorted by arrival here;
        `on_progress(n)` is called with the number of requests that ended so far, now
        and then (for progress bars)."""
        wall = time.perf_counter()
        loop = _Loop(len(self.devices), ended=[])
        ordered = sorted(requests, key=lambda r: (r.arrival, r.request_id))
        first = ordered[0].arrival if ordered else self.clock.now
        self._drive(loop, iter(ordered), on_progress, 4096)
        if on_progress is not None:
            on_progress(len(loop.outcomes))
        last = max([first, *(r.end for r in loop.records), *(r.arrival for r in ordered)])
        return SimResult(
            outcomes=[loop.outcomes[k] for k in sorted(loop.outcomes)],
            records=loop.records,
            predicted=loop.predicted,
            duration=last - first,
            busy_slot_s=sum(d.busy_time for d in self.devices),
            slots=sum(d.num_slots for d in self.devices),
            events=loop.events,
            wall_s=time.perf_counter() - wall,
            dispatches=loop.ended or [],
        )

    def _drive(
        self,
        loop: _Loop,
        requests: Iterator[Request],
        on_progress: Callable[[int], None] | None,
        every: int,
    ) -> None:
        """The event loop: arrivals (in arrival order) interleaved with batch ends and
        scheduler timers, until every request has ended and every device is idle. A
        request reaches its scheduler the host's arrival hand-off after its arrival (the
        devices' law.arrival_s, the largest where they differ; 0 by default). After each
        event, its device's next end and its scheduler's timer are armed once."""
        heap, versions, pending = loop.heap, loop.versions, loop.pending
        clock, schedulers = self.clock, self.schedulers
        pop = heapq.heappop
        delay = self.arrival_s
        if delay is None:
            delay = max(d.law.arrival_s for d in self.devices)
        nxt = next(requests, None)
        if nxt is not None:
            clock.now = max(clock.now, nxt.arrival + delay)
        n, last, events = 0, -math.inf, loop.events
        while nxt is not None or heap:
            t_next = math.inf  # the next valid device/timer event (stale entries dropped)
            while heap:
                t, kind, dev, version = heap[0]
                if versions[kind][dev] == version:
                    t_next = t
                    break
                pop(heap)
            if nxt is not None and nxt.arrival + delay <= t_next:
                if nxt.arrival < last:
                    raise ConfigError("requests must come in arrival order")
                last = nxt.arrival
                if last + delay > clock.now:
                    clock.now = last + delay
                dev = self._route(nxt, n)
                n += 1
                pending[nxt.request_id] = nxt
                self._apply(loop, dev, schedulers[dev].on_arrival(nxt, clock.now))
                self._arm(loop, dev)
                nxt = next(requests, None)
            elif heap:
                self._fire(loop, pop(heap))
            events += 1
            if on_progress is not None and events % every == 0:
                loop.events = events
                on_progress(len(loop.outcomes))
        loop.events = events
        for d in self.devices:
            d.close()
        if pending:  # a request neither ended nor queued: a scheduler bug
            raise RuntimeError(f"{len(pending)} requests never ended")

    # -- events --------------------------------------------------------------------------
    def _fire(self, loop: _Loop, entry: tuple[float, int, int, int]) -> None:
        t, kind, dev, _ = entry
        loop.versions[kind][dev] += 1  # consumed: nothing of this kind armed now
        loop.armed[kind][dev] = None
        if t > self.clock.now:
            self.clock.now = t
        if kind == _DEVICE:
            self.devices[dev].advance(t)  # callbacks feed the scheduler
        else:
            self._apply(loop, dev, self.schedulers[dev].on_tick(self.clock.now))
        self._arm(loop, dev)

    def _route(self, request: Request, n: int) -> int:
        if len(self.devices) == 1:
            return 0
        if self.route == "round-robin":
            return n % len(self.devices)
        loads = [s.queued() + s.running_batches() for s in self.schedulers]
        return loads.index(min(loads))  # the first of the least loaded

    def _apply(self, loop: _Loop, dev: int, decisions: Sequence[object]) -> None:
        """Carry out device `dev`'s decisions (whoever brought the event arms it after)."""
        for d in decisions:
            if isinstance(d, Dispatch):
                self.devices[dev].submit(
                    d.slot,
                    BatchJob(d.batch_id, d.model, d.batch_size),
                    partial(self._on_done, loop, dev, d),
                )
            elif isinstance(d, Reject):
                r = loop.pending.pop(d.request_id)
                loop.outcomes[r.request_id] = RequestOutcome.unrun(r, "rejected", d.reason, d.kind)
            elif isinstance(d, Finished):
                self._finished(loop, d)
        self.schedulers[dev].learn()  # off the decision path, as the runtime does

    def _finished(self, loop: _Loop, done: Finished) -> None:
        rec = done.record
        loop.records.append(rec)
        loop.predicted.append(done.predicted_latency)
        for rid in done.request_ids:
            r = loop.pending.pop(rid)
            reason = None if done.ok else "simulated engine failure"
            loop.outcomes[rid] = RequestOutcome.ran(r, rec, done.ok, reason)

    def _on_done(self, loop: _Loop, dev: int, d: Dispatch, result: BatchResult) -> None:
        """Batch `d` ended on device `dev` (called from the device's `advance`, whose
        caller arms the device after)."""
        if loop.ended is not None:  # the order `_finished` will see them in
            loop.ended.append(d)
        # (BatchRecord.from_result's, less reading phases: a simulated device has none)
        record = BatchRecord(
            result.batch_id,
            result.model,
            result.batch_size,
            result.slot,
            d.decided_at,
            result.start,
            result.end,
            device=dev + self.first_device,
        )
        decisions = self.schedulers[dev].on_complete(
            record, self.clock.now, ok=result.error is None
        )
        self._apply(loop, dev, decisions)

    def _arm(self, loop: _Loop, dev: int) -> None:
        """(Re)schedule device `dev`'s next batch end and its scheduler's timer; an
        unchanged time keeps its heap entry."""
        armed = loop.armed
        t = self.devices[dev].next_event()
        if armed[_DEVICE][dev] != t:
            self._push(loop, _DEVICE, dev, t)
        t = self.schedulers[dev].next_wakeup()
        if t is not None and t < self.clock.now:
            t = self.clock.now
        if armed[_TIMER][dev] != t:
            self._push(loop, _TIMER, dev, t)

    @staticmethod
    def _push(loop: _Loop, kind: int, dev: int, t: float | None) -> None:
        version = loop.versions[kind][dev] + 1
        loop.versions[kind][dev] = version
        loop.armed[kind][dev] = t
        if t is not None:
            heapq.heappush(loop.heap, (t, kind, dev, version))


def profile_cost(profile: Profile, default_demand: float = 0.5):
    """A simulated device's cost model from a solo profile: solo latency, and the
    compute/memory utilisations as demands."""
    cache: dict[tuple[str, int], tuple[float, float, float]] = {}

    def cost(model: str, batch_size: int) -> tuple[float, float, float]:
        key = (model, batch_size)
        value = cache.get(key)
        if value is None:
            f = profile.features(model, batch_size)
            value = cache[key] = (
                profile.solo_latency(model, batch_size),
                float(f.get("compute_util", default_demand)),
                float(f.get("memory_util", default_demand)),
            )
        return value

    return cost


def build_simulation(
    profile: Profile,
    models: Sequence[str],
    *,
    policy: str = "predlat",
    devices: int = 1,
    slots: int = 4,
    law: InterferenceLaw | None = None,
    seed: int = 0,
    quantile: float = 0.95,
    config: SchedulerConfig | None = None,
    forecaster: Callable[[int], ForecasterLike] | None = None,
    route: str = "round-robin",
) -> Simulation:
    """`devices` simulated devices with `slots` slots each, one scheduler per device
    under `policy`. `forecaster(device_index)` overrides the policy's forecaster."""
    if devices < 1:
        raise ConfigError(f"devices must be at least 1, got {devices}")
    chosen = get_policy(policy, quantile)
    clock = VirtualClock()
    cost = profile_cost(profile)
    sims: list[SimulatedDevice] = []
    scheds: list[Scheduler] = []
    for d in range(devices):
        device = SimulatedDevice(
            cost, slots, law, seed=seed * 100_003 + d, clock=clock, name=f"sim{d}"
        )
        for m in models:
            device.load(m)
        fc = forecaster(d) if forecaster else chosen.make_forecaster(profile, quantile)
        sims.append(device)
        scheds.append(Scheduler(models, slots, fc, profile, chosen, config))
    return Simulation(sims, scheds, clock, route)
