"""One comparison run: a policy against one seeded workload on a fresh runtime (the real
device, wall clock), and the per-run metrics, live forecast error included."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from predlat.predict.base import BasePredictor
from predlat.profiling.cpu_meter import HostCpuMeter
from predlat.profiling.profile import Profile
from predlat.runtime.build import build_runtime, policy_threads, warm_up
from predlat.scheduling.outcome import RequestOutcome, summarize
from predlat.scheduling.policies import Policy
from predlat.scheduling.request import Dispatch, Priority
from predlat.traces.collect import CpuMeter
from predlat.traces.records import BatchRecord, Overlap
from predlat.workload.arrivals import Arrival, open_loop_workload


@dataclass(frozen=True)
class RunSpec:
    policy: Policy  # planning at the run-level quantile
    load: float  # fraction of the device capacity
    seed: int  # the workload's seed (the same for every policy at this load)


@dataclass
class RunResult:
    policy: str
    load: float
    metrics: dict[str, float]
    outcomes: list[RequestOutcome] = field(repr=False, default_factory=list)
    # the batches the run served, with their timelines (what a calibration fits the
    # serving host's tail on: `predlat.sim.tail`)
    records: list[BatchRecord] = field(repr=False, default_factory=list)


Runner = Callable[[RunSpec], RunResult]


@dataclass
class Setup:
    """What every run of one comparison shares."""

    models: tuple[str, ...]
    profile: Profile
    capacity_rps: float  # requests/s at load 1
    deadlines: dict[str, float]  # model -> seconds
    # Fitted predictors by predictor name, each run starts from a copy; one-at-a-time
    # policies start from the solo prior of their own profile instead.
    predictors: dict[str, BasePredictor] = field(default_factory=dict)
    history: dict[str, object] = field(default_factory=dict)  # how they were warmed up
    records: list[BatchRecord] = field(default_factory=list)  # the warm-up history itself


def live_forecast(batches: Sequence[tuple[BatchRecord, Dispatch]]) -> dict[str, float]:
    """Live forecast error of dispatched batches, from the forecast each was admitted
    with: mean |mean forecast end - actual end| / (actual end - dispatch decision), and
    the fraction that ended after the end the policy planned with (its quantile, or
    the mean for policies that plan at the mean)."""
    errors, exceeded = [], []
    for rec, d in batches:
        horizon = rec.end - d.decided_at
        if horizon <= 0:
            continue
        errors.append(abs(d.predicted_mean_end - rec.end) / horizon)
        exceeded.append(rec.end > d.predicted_end + 1e-9)
    return {
        "live_forecast_err": float(np.mean(errors)) if errors else math.nan,
        "planned_end_exceeded": float(np.mean(exceeded)) if exceeded else math.nan,
        "batches": float(len(errors)),
    }


class DeviceRunner:
    """Runs on the real device: a fresh runtime per run, arrivals replayed open loop."""

    def __init__(self, config, setup: Setup) -> None:  # config: CompareConfig
        self.config = config
        self.setup = setup

    def arrivals(self, load: float, seed: int) -> list[Arrival]:
        names = self.setup.models
        rates = {m: load * self.setup.capacity_rps / len(names) for m in names}
        c = self.config
        return open_loop_workload(rates, c.duration_s, seed, c.process, c.hp_frac)

    def starting_predictor(self, policy):
        """A fresh copy of the fitted predictor `policy` starts from (every run learns
        on its own), sharing the profile; None for policies that do not predict."""
        if policy.one_at_a_time or policy.predictor not in self.setup.predictors:
            return None
        fitted = self.setup.predictors[policy.predictor]
        return copy.deepcopy(fitted, {id(fitted.profile): fitted.profile})

    def __call__(self, spec: RunSpec) -> RunResult:
        c, setup = self.config, self.setup
        policy = spec.policy
        predictor = self.starting_predictor(policy)
        runtime, _ = build_runtime(
            c.models,
            slots=c.slots,
            policy=policy,
            threads=c.threads,
            device=c.device,
            max_queue=c.max_queue,
            progress=False,
            max_batch=c.max_batch,
            high_reserve=c.high_reserve,
            predictor=predictor,
        )
        dispatched: dict[int, Dispatch] = {}
        batches: list[tuple[BatchRecord, Dispatch]] = []
        runtime.add_dispatch_listener(lambda d: dispatched.__setitem__(d.batch_id, d))
        runtime.add_batch_listener(
            lambda rec, _: batches.append((rec, dispatched.pop(rec.batch_id)))
        )
        arrivals = self.arrivals(spec.load, spec.seed)
        # Every run starts from a fresh runtime: warm it, or its cold first batches would
        # count against the policy (and against the simulator's agreement).
        warm_up(runtime.device, setup.models, c.max_batch)
        runtime.start()
        try:
            meter = CpuMeter()
            host_meter = HostCpuMeter(runtime.device, exact=_one_thread(policy, c))
            futures, submit_lags = _replay(runtime, arrivals, setup.deadlines)
            outcomes = [f.result(timeout=c.duration_s + 120.0) for f in futures]
            foreign = meter.foreign_frac()
            host = host_meter.read()
            stats = runtime.stats()
        finally:
            runtime.stop(drain=False)
        metrics = summarize(outcomes, c.duration_s)
        # Other processes' share of the machine's CPU meanwhile: interference that no
        # policy or predictor can see, so readers can judge a run on a shared machine.
        metrics["foreign_cpu_frac"] = math.nan if foreign is None else foreign
        metrics.update(host_cpu_metrics(host, len(batches)))
        metrics["utilization"] = stats.busy_slot_s / (runtime.device.num_slots * _span(outcomes))
        metrics.update(live_forecast(batches))
        metrics["dispatch_lag_p50_ms"] = stats.dispatch_lag_p50_ms
        metrics["dispatch_lag_p99_ms"] = stats.dispatch_lag_p99_ms
        metrics["mean_batch_size"] = (
            float(np.mean([r.batch_size for r, _ in batches])) if batches else math.nan
        )
        metrics["submit_lag_p99_ms"] = (
            float(np.percentile(submit_lags, 99) * 1e3) if submit_lags else math.nan
        )
        return RunResult(policy.name, spec.load, metrics, outcomes, [r for r, _ in batches])


def _one_thread(policy: Policy, config) -> bool:
    return policy_threads(policy, config.device, config.threads) == 1


def host_cpu_metrics(host: tuple[float, float] | None, batches: int) -> dict[str, float]:
    """The serving host's own CPU over a run (`HostCpuMeter.read`): in cores, and in
    milliseconds per batch served (NaN where it could not be told apart)."""
    if host is None:
        return {"host_cpu_cores": math.nan, "host_cpu_ms_per_batch": math.nan}
    cpu, wall = host
    return {
        "host_cpu_cores": cpu / wall if wall > 0 else math.nan,
        "host_cpu_ms_per_batch": 1e3 * cpu / batches if batches else math.nan,
    }


def _replay(runtime, arrivals: Sequence[Arrival], deadlines: Mapping[str, float]):
    """Submit each arrival at its time (open loop); returns futures and how late each
    submission was."""
    futures, lags = [], []
    t0 = time.perf_counter() + 0.05
    for a in arrivals:
        target = t0 + a.time
        wait = target - time.perf_counter()
        if wait > 0:  # sleep, never spin: a spinning feeder would hold the GIL
            time.sleep(wait)
        lags.append(time.perf_counter() - target)
        futures.append(
            runtime.submit(
                a.model,
                None,
                deadline_s=deadlines[a.model],
                priority=Priority.HIGH if a.high_priority else Priority.LOW,
            )
        )
    return futures, lags


def _span(outcomes: Sequence[RequestOutcome]) -> float:
    if not outcomes:
        return 1e-9
    first = min(o.arrival for o in outcomes)
    last = max([o.end for o in outcomes if o.end is not None] or [first])
    return max(last - first, 1e-9)


def concatenate(parts: Sequence[Sequence[BatchRecord]], gap_s: float = 1.0) -> list[BatchRecord]:
    """Traces one after the other on one clock (each shifted past the previous one's
    end, batch ids renumbered), so a forecast replay sees one history."""
    out: list[BatchRecord] = []
    offset, next_id = 0.0, 0
    for part in parts:
        if not part:
            continue
        base = min(r.dispatch for r in part)
        shift = offset - base
        ids = {r.batch_id: next_id + i for i, r in enumerate(part)}
        for r in part:
            timeline = tuple(
                Overlap(
                    ids.get(o.batch_id, -1), o.model, o.batch_size, o.start + shift, o.end + shift
                )
                for o in r.timeline
            )
            out.append(
                replace(
                    r,
                    batch_id=ids[r.batch_id],
                    dispatch=r.dispatch + shift,
                    start=r.start + shift,
                    end=r.end + shift,
                    timeline=timeline,
                )
            )
        next_id += len(part)
        offset = max(r.end for r in out) + gap_s
    return out
