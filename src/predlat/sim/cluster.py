"""A simulated cluster: N simulated devices (each from its own device.json), each with its
own scheduler and predictor, behind a front dispatcher, run as a stream.

Routes: `round-robin`, `least-loaded` (fewest queued + running), and `predlat`, the rule
the Ray Serve router uses (`predlat.scheduling.routing.rank`: the device whose forecast
says the request finishes earliest within its deadline). When no device is forecast to
meet the deadline, the request still goes to the soonest one and that device's scheduler
decides (it may run it late or reject it), so every request ends on exactly one device.

Requests are consumed from an iterator and outcomes folded into `StreamStats`: memory
stays flat in the request count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property

from predlat.devices.simulated import SimulatedDevice, VirtualClock
from predlat.errors import ConfigError
from predlat.scheduling.policies import Policy, get_policy
from predlat.scheduling.request import Finished, Priority, Request
from predlat.scheduling.routing import (
    DeviceForecast,
    RouteRequest,
    completion_s,
    rank,
    solo_latency,
)
from predlat.scheduling.scheduler import Scheduler, SchedulerConfig
from predlat.sim.device_file import DeviceSpec
from predlat.sim.metrics import StreamStats
from predlat.sim.oracle import ORACLE, OracleForecaster
from predlat.sim.replay import random_colocation
from predlat.sim.route_view import RouteView
from predlat.sim.simulator import Simulation, _Loop

CLUSTER_ROUTES = ("round-robin", "least-loaded", "predlat")
SIM_POLICIES = ("serial", "oblivious", "coarse", "predlat", "oracle")


class ClusterSimulation(Simulation):
    routes = CLUSTER_ROUTES

    # Built on first use, so the constructor stays Simulation's own.
    @cached_property
    def _solo(self) -> list[dict[str, dict[int, float]]]:
        """Each device's profiled solo latencies, read at every routing decision."""
        return [
            {
                m: {n: s.profile.solo_latency(m, n) for n in s.profile.batch_sizes(m)}
                for m in s.models
            }
            for s in self.schedulers
        ]

    @cached_property
    def _stats(self) -> StreamStats:
        return StreamStats()  # run_stream replaces it with its own

    @cached_property
    def _views(self) -> list[RouteView | None]:
        """Each device's routing view; None once its scheduler has seen an event since."""
        return [None] * len(self.devices)

    @cached_property
    def _names(self) -> list[str]:
        return [str(d) for d in range(len(self.devices))]

    @cached_property
    def _solo_at(self) -> list[dict[tuple[str, int], float]]:
        """Per device, `routing.solo_latency` of (model, rows), as routing has read it."""
        return [{} for _ in self.devices]

    # -- routing -------------------------------------------------------------------------
    def _route(self, request: Request, n: int) -> int:
        if self.route != "predlat" or len(self.devices) == 1:
            return super()._route(request, n)
        now = self.clock.now
        deadline_s = max(request.deadline - now, 1e-12)
        if request.size >= 1 and math.isfinite(deadline_s):
            chosen = self._soonest(request, now, deadline_s)
            if chosen is not None:
                return chosen
        return self._ranked(request, now)  # (and the errors of requests it refuses)

    def _soonest(self, request: Request, now: float, deadline_s: float) -> int | None:
        """The device `_ranked` picks, from the devices' views without building their
        forecasts: of those forecast to meet the deadline the soonest (ties by name, as
        `rank` sorts), else the soonest of all (ties by index). None if none serves."""
        model, rows, high = request.model, request.size, request.priority == Priority.HIGH
        views, solo_at, names = self._views, self._solo_at, self._names
        met: tuple[float, str] | None = None
        met_at, late = -1, None
        for d, tables in enumerate(self._solo):
            table = tables.get(model)
            if table is None:
                continue
            view = views[d] or self._view(d)
            solo = solo_at[d].get((model, rows))
            if solo is None:
                solo = solo_at[d][(model, rows)] = solo_latency(table, rows)
            service = solo * max(view.slowdown.get(model, 1.0), 1.0)  # (routing.service_s)
            c = view.completion_s(high, now, service)
            if c <= deadline_s and (met is None or (c, names[d]) < met):
                met, met_at = (c, names[d]), d
            if late is None or (c, d) < late:
                late = (c, d)
        if met is not None:
            return met_at
        return late[1] if late is not None else None

    def _ranked(self, request: Request, now: float) -> int:
        """The rule itself: every device's forecast, ranked by `routing.rank`."""
        forecasts = [self._forecast(d, now) for d in range(len(self.devices))]
        ask = RouteRequest(
            request.model, request.size, request.priority, max(request.deadline - now, 1e-12)
        )
        decision = rank(forecasts, ask)
        if decision.best is not None:
            return int(decision.best.name)
        able = [f for f in forecasts if f.serves(request.model)] or forecasts
        return int(min(able, key=lambda f: (completion_s(f, ask), int(f.name))).name)

    def _forecast(self, d: int, now: float) -> DeviceForecast:
        view = self._view(d)
        return DeviceForecast(
            name=str(d),
            slots=view.slots,
            solo_s=self._solo[d],
            running_s=view.running_s(now),
            backlog_s=view.backlog_s,
            running_batches=len(view.ends),
            queued=view.queued,
            slowdown=view.slowdown,
        )

    def _view(self, d: int) -> RouteView:
        view = self._views[d]
        if view is None:
            view = self._views[d] = self._make_view(d)
        return view

    def _make_view(self, d: int) -> RouteView:
        s = self.schedulers[d]
        solo = self._solo[d]
        ends: list[float] = []
        slow: dict[str, list[float]] = {}
        for r in s.running():
            ends.append(r.predicted_mean_end)
            alone = solo[r.model].get(r.batch_size) or s._solo(r.model, r.batch_size)
            slow.setdefault(r.model, []).append((r.predicted_mean_end - r.start) / alone)
        big = s.config.max_batch
        backlog = {
            m: q * (solo[m].get(big) or s._solo(m, big)) / big
            for m, q in s.queue_lengths().items()
            if q
        }
        return RouteView(
            slots=s.num_slots,
            ends=tuple(ends),
            backlog_s=backlog,
            backlog_total=sum(backlog.values()),
            queued=s.queued(),
            slowdown={m: sum(v) / len(v) for m, v in slow.items()},  # per model, as replicas
        )

    def _apply(self, loop: _Loop, dev: int, decisions: Sequence[object]) -> None:
        self._views[dev] = None  # its scheduler saw an event: rebuilt when next read
        super()._apply(loop, dev, decisions)

    # -- streaming run -------------------------------------------------------------------
    def run_stream(
        self,
        requests: Iterable[Request],
        keep: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[StreamStats, float]:
        """Simulate `requests` (in arrival order) to their ends; returns the metrics and
        the wall seconds taken."""
        wall = time.perf_counter()
        stats = self._stats = StreamStats(keep=keep)
        self._views = [None] * len(self.devices)
        loop = _Loop(len(self.devices))
        loop.outcomes = stats  # type: ignore[assignment]
        self._drive(loop, iter(requests), on_progress, 65536)
        return stats, time.perf_counter() - wall

    def _finished(self, loop: _Loop, done: Finished) -> None:
        """As the base class, but into the streaming metrics (no per-batch lists)."""
        stats, pending, record, ok = self._stats, loop.pending, done.record, done.ok
        stats.add_batch(record, done.predicted_latency)
        reason = None if ok else "simulated engine failure"
        for rid in done.request_ids:
            stats.ran(pending.pop(rid), record, ok, reason)

    def busy_slot_s(self) -> float:
        return sum(d.busy_time for d in self.devices)

    def slots(self) -> int:
        return sum(d.num_slots for d in self.devices)


def build_cluster(
    specs: Sequence[DeviceSpec],
    devices: int,
    policy: str | Policy,
    *,
    route: str = "round-robin",
    slots: int | None = None,
    seed: int = 0,
    quantile: float | None = 0.95,
    config: SchedulerConfig | None = None,
    train_batches: int = 300,
    only: range | None = None,
) -> ClusterSimulation:
    """`devices` simulated devices cycling over `specs`, one scheduler each under `policy`
    (one of SIM_POLICIES, or a Policy of one's own, e.g. with a registered predictor);
    predictors that need data start from a short random co-location trace of their own
    device type (as `predlat compare` trains on one). `only`, a block of device indices,
    builds just those devices, as the whole cluster has them (a shard: `sim.shard`)."""
    if devices < 1:
        raise ConfigError(f"devices must be at least 1, got {devices}")
    if not specs:
        raise ConfigError("give at least one device")
    if isinstance(policy, Policy):
        chosen = policy if policy is ORACLE else policy.with_quantile(quantile)
    elif policy not in SIM_POLICIES:
        raise ConfigError(f"unknown policy '{policy}' (choose {', '.join(SIM_POLICIES)})")
    else:
        chosen = ORACLE if policy == "oracle" else get_policy(policy).with_quantile(quantile)
    block = range(devices) if only is None else only
    if block.step != 1 or not 0 <= block.start < block.stop <= devices:
        raise ConfigError(f"a shard must be a block of the {devices} devices, got {block}")
    clock = VirtualClock()
    cache: dict[int, tuple] = {}
    sims, scheds = [], []
    for d in block:
        spec = specs[d % len(specs)]
        k = slots or spec.slots
        if id(spec) not in cache:
            training = []
            if chosen.predictor not in ("solo",) and train_batches > 0:
                training = random_colocation(spec, k, train_batches, seed=seed + 1, gap_s=0.0)
            cache[id(spec)] = (spec.profile(), spec.cost(), training)
        profile, cost, training = cache[id(spec)]
        device = SimulatedDevice(
            cost, k, spec.law, seed=seed * 100_003 + d, clock=clock, name=f"{spec.name}#{d}"
        )
        for m in spec.models:
            device.load(m)
        if chosen is ORACLE:
            fc = OracleForecaster(device, cost)
        else:
            fc = chosen.make_forecaster(profile, quantile, training)
        sims.append(device)
        scheds.append(Scheduler(sorted(spec.models), k, fc, profile, chosen, config))
    sim = ClusterSimulation(sims, scheds, clock, route)
    sim.first_device = block.start
    sim.arrival_s = max(s.law.arrival_s for s in specs[:devices])  # the types in use
    return sim


__all__ = ["CLUSTER_ROUTES", "SIM_POLICIES", "ClusterSimulation", "Priority", "build_cluster"]
