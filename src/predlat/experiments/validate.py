"""`predlat validate`: the simulator checked against the real device, on the same workload.

Method
- `predlat compare`'s setup runs once on the real device: profiles, deadlines, the
  capacity unit, and the warm-up history (a mixed-load co-location trace) every
  predictive policy's predictor is fitted on.
- A simulated device is calibrated from that same warm-up history (`predlat calibrate`'s
  fit: per-pair slowdowns, time-shared cores, noise). The warm-up history is collected by
  trace collection's own dispatcher, not the runtime, so the runtime's hand-offs
  (arrival -> scheduler, decision -> start, end -> scheduler: `predlat.sim.handoff`)
  are fitted from one more real run first: the runtime serving `ours` (or the first
  policy) at load `PROBE_LOAD` on a workload seed no compared run uses. With
  `--measured-tail`, that run's batches and gaps set the noise and hand-off tables.
  One-at-a-time policies that use another thread count get the calibrated device
  with solo latencies from the profile at their thread count (times the same fitted
  solo scale).
- `predlat compare` then runs twice with the same config and setup: once on the real
  device (its own runner), once with `SimRunner`, which replays each run's seeded
  arrivals (the same requests, deadlines and priorities) through the same scheduler,
  policy and starting predictor on the calibrated device, on a virtual clock.
- The report compares, per policy and load, deadline satisfaction (high priority and
  all), p50/p99 latency, and each policy's SLO capacity: simulated minus real, in
  percentage points for fractions and in percent for latencies and capacity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from predlat.devices.base import host_cores
from predlat.devices.simulated import SimulatedDevice, VirtualClock
from predlat.errors import ConfigError
from predlat.experiments.compare import CompareConfig, prepare, quick_config, run_compare
from predlat.experiments.compare_runs import (
    DeviceRunner,
    Runner,
    RunResult,
    RunSpec,
    Setup,
    live_forecast,
)
from predlat.profiling.cpu_meter import foreign_cpu_limit, quietest
from predlat.profiling.profile import Profile
from predlat.profiling.profiler import load_or_profile
from predlat.runtime.build import BATCH_SIZES, MARGIN_S, REPEATS, policy_threads
from predlat.scheduling.outcome import summarize
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.scheduler import Scheduler, SchedulerConfig
from predlat.sim.calibrate import Calibration, calibrate, rescaled
from predlat.sim.device_file import DeviceSpec
from predlat.sim.handoff import HandOff, fit_handoff, with_host_cpu
from predlat.sim.simulator import Simulation
from predlat.sim.tail import with_served_noise

ProfileFor = Callable[[int], Profile]  # intra-op threads -> the solo profile at that count
DeviceFor = Callable[[int], tuple[DeviceSpec, Profile]]  # ... -> device and profile
ProgressFn = Callable[[str, float], None]

# Share of the progress bar the real device's runs take (the simulated ones are quick).
_REAL_SHARE = 0.95
# The hand-off probe: a light load (most requests meet an idle slot, and an end finds
# requests waiting often enough) on a seed offset no compared run's seed reaches.
PROBE_LOAD = 0.3
PROBE_SEED_OFFSET = 1000


def quick_validate_config(**overrides: Any) -> CompareConfig:
    """compare's quick config on two small zoo models, with shorter runs: about two
    minutes on a small machine."""
    base = quick_config(models=("roberta", "resnet"), duration_s=3.0, train_s=12.0)
    return replace(base, **overrides)


@dataclass
class QuietRunner:
    """Real runs repeated, up to `tries` in all, while other processes took more than
    `limit` of the CPU (`foreign_cpu_limit()`, as for profiles), keeping the quietest.

    The simulator runs alone; a real run that shares the machine measures the neighbours
    as well. It costs one-at-a-time policies most: a 2-thread batch on 2 cores waits for
    its slower thread, so a process taking one core made it as slow as 1 thread (and a
    29% share cut `serial`'s real SLO capacity to a quarter of the simulated one).
    `runs` counts the runs made per (policy, load, seed)."""

    runner: Runner
    limit: float
    tries: int = 3
    runs: dict[tuple[str, float, int], int] = field(default_factory=dict)

    def __call__(self, spec: RunSpec) -> RunResult:
        best, made = quietest(lambda: self.runner(spec), _foreign, self.limit, self.tries)
        self.runs[(spec.policy.name, spec.load, spec.seed)] = made
        return best


def _foreign(result: RunResult) -> float:
    share = result.metrics.get("foreign_cpu_frac", math.nan)
    return 0.0 if math.isnan(share) else share  # unmeasured counts as quiet


class SimRunner(DeviceRunner):
    """One comparison run on a simulated device instead of the real one: the same
    arrivals (DeviceRunner's), scheduler, policy, starting predictor and deadline
    margin, on a virtual clock. `other_threads(t)` gives the device and the scheduler's
    profile for a policy running t threads per slot (not the config's)."""

    def __init__(
        self,
        config: CompareConfig,
        setup: Setup,
        spec: DeviceSpec,
        other_threads: DeviceFor | None = None,
    ) -> None:
        super().__init__(config, setup)
        self.spec = spec
        self.other_threads = other_threads
        self._devices: dict[int, tuple[DeviceSpec, Profile]] = {}

    def device_for(self, threads: int) -> tuple[DeviceSpec, Profile]:
        """The simulated device and the scheduler's profile at `threads` per slot."""
        if threads == self.config.threads:
            return self.spec, self.setup.profile
        if threads not in self._devices:
            if self.other_threads is None:
                raise ConfigError(f"no simulated device for {threads} threads per slot")
            self._devices[threads] = self.other_threads(threads)
        return self._devices[threads]

    def __call__(self, spec: RunSpec) -> RunResult:
        c, policy = self.config, spec.policy
        assert c.slots is not None
        slots = 1 if policy.one_at_a_time else c.slots
        device_spec, profile = self.device_for(policy_threads(policy, c.device, c.threads))
        predictor = self.starting_predictor(policy)
        scheduler = Scheduler(
            list(self.setup.models),
            slots,
            policy.make_forecaster(profile, predictor=predictor),
            profile,
            policy,
            SchedulerConfig(
                max_batch=c.max_batch,
                max_queue=c.max_queue,
                margin_s=MARGIN_S,
                high_reserve=c.high_reserve,
            ),
        )
        sim = _simulation(device_spec, slots, scheduler, seed=spec.seed)
        result = sim.run(self.requests(spec.load, spec.seed))
        metrics = summarize(result.outcomes, c.duration_s)
        metrics["foreign_cpu_frac"] = math.nan  # nothing else runs on a virtual clock
        metrics["utilization"] = result.busy_slot_s / (slots * max(result.duration, 1e-9))
        metrics.update(live_forecast(list(zip(result.records, result.dispatches, strict=True))))
        law, table = device_spec.law, device_spec.law.dispatch_table  # measured, or constant
        for q in (50, 99):
            lag = table.quantile(q / 100) if table else law.dispatch_s
            metrics[f"dispatch_lag_p{q}_ms"] = 1e3 * lag
        metrics["submit_lag_p99_ms"] = 0.0
        metrics["mean_batch_size"] = (
            sum(r.batch_size for r in result.records) / len(result.records)
            if result.records
            else math.nan
        )
        return RunResult(policy.name, spec.load, metrics, result.outcomes, result.records)

    def requests(self, load: float, seed: int) -> list[Request]:
        """The run's arrivals as the runtime turns them into requests."""
        deadlines = self.setup.deadlines
        return [
            Request(
                i,
                a.model,
                a.time,
                a.time + deadlines[a.model],
                Priority.HIGH if a.high_priority else Priority.LOW,
            )
            for i, a in enumerate(self.arrivals(load, seed))
        ]


def _simulation(spec: DeviceSpec, slots: int, scheduler: Scheduler, seed: int) -> Simulation:
    clock = VirtualClock()
    device = SimulatedDevice(spec.cost(), slots, spec.law, seed=seed, clock=clock, name=spec.name)
    for m in scheduler.models:
        device.load(m)
    return Simulation([device], [scheduler], clock)


def run_validate(
    config: CompareConfig,
    progress: ProgressFn | None = None,
    *,
    setup: Setup | None = None,
    real_runner: Runner | None = None,
    profile_for: ProfileFor | None = None,
    measured_tail: bool = False,
    host_cpu: bool = False,
) -> dict[str, Any]:
    """The comparison on the real device and on the device calibrated from its warm-up
    history; returns the results.json content (both runs in compare's schema, the
    calibration and the differences). Off by default (see README): `measured_tail`,
    noise and hand-offs drawn from the probe's tables; `host_cpu`, the runtime's own CPU
    per batch on the probe taken from the simulated batches. `setup`, `real_runner` and
    `profile_for` replace the real device (tests)."""
    config.validate()
    config = config.resolved()
    note = progress or (lambda what, frac: None)
    if setup is None:
        note("profiling and warm-up history", 0.0)
        setup = prepare(config)
    if not setup.records:
        raise ConfigError("validation calibrates on the warm-up history: give it seconds")
    if real_runner is None:
        real_runner = QuietRunner(DeviceRunner(config, setup), foreign_cpu_limit())
    note("hand-off probe", 0.0)
    probe = probe_run(config, real_runner)
    handoff = fit_handoff(probe.outcomes, tables=measured_tail)
    cal = calibrate(
        setup.records, setup.profile, name="calibrated", slots=config.slots, handoff=handoff
    )
    if measured_tail:
        cal = with_served_noise(cal, probe.records)
    if host_cpu:
        host = probe.metrics.get("host_cpu_ms_per_batch")
        cal = replace(cal, spec=with_host_cpu(cal.spec, host, min(config.slots, host_cores())))
    profile_for = profile_for or _profiles(config)

    def other_threads(threads: int) -> tuple[DeviceSpec, Profile]:
        profile = profile_for(threads)
        return rescaled(cal, profile, slots=1), profile

    sim_runner = SimRunner(config, setup, cal.spec, other_threads)
    real = run_compare(
        config,
        lambda what, f: note(f"real: {what}", _REAL_SHARE * f),
        setup=setup,
        runner=real_runner,
    )
    sim = run_compare(
        config,
        lambda what, f: note(f"simulated: {what}", _REAL_SHARE + (1 - _REAL_SHARE) * f),
        setup=setup,
        runner=sim_runner,
    )
    return {
        "real": real,
        "simulated": sim,
        "calibration": {**calibration_summary(cal), "handoff": _probe_json(handoff, probe)},
        "device": cal.spec.to_json(),
        "differences": differences(real, sim, getattr(real_runner, "runs", None)),
        "_calibration": cal,  # for the report's fit section; removed before writing
        "_records": setup.records,
    }


def probe_run(config: CompareConfig, runner: Runner) -> RunResult:
    """One real run that no comparison uses: the runtime's hand-offs and noise."""
    name = config.ours if config.ours in config.policies else config.policies[0]
    return runner(RunSpec(config.policy(name), PROBE_LOAD, config.seed + PROBE_SEED_OFFSET))


def _probe_json(handoff: HandOff, probe: RunResult) -> dict[str, Any]:
    """The hand-offs, the host's CPU, and other processes' CPU share meanwhile."""
    keys = ("foreign_cpu_frac", "host_cpu_cores", "host_cpu_ms_per_batch")
    got = {k: probe.metrics.get(k, math.nan) for k in keys}
    return {**handoff.to_json(), **{k: None if math.isnan(v) else v for k, v in got.items()}}


def _profiles(config: CompareConfig) -> ProfileFor:
    from predlat.models.registry import resolve_models

    def profile_for(threads: int) -> Profile:  # cached per machine by compare's prepare
        specs = resolve_models(list(config.models))
        return load_or_profile(
            specs, BATCH_SIZES, REPEATS, intra_op_threads=threads, device=config.device
        )

    return profile_for


def calibration_summary(cal: Calibration) -> dict[str, Any]:
    law = cal.spec.law
    return {
        "batches": cal.records,
        "cores": law.cores,
        "noise_sigma": law.noise_sigma,
        "noise_per_corunner": law.noise_per_corunner,
        "noise_table_batches": cal.served,  # served batches it was measured on (0: none)
        "rms_log_err": cal.rms_log_err,
        "solo_scale": cal.solo_scale,
        "pairs": {f"{p.model}|{p.co_runner}": p.slowdown for p in cal.pairs},
    }


# -- the comparison ------------------------------------------------------------------------
_FRACTIONS = ("met_frac", "hp_met")
_LATENCIES = ("p50_ms", "p99_ms")


def differences(
    real: Mapping[str, Any],
    sim: Mapping[str, Any],
    runs: Mapping[tuple[str, float, int], int] | None = None,
) -> dict[str, Any]:
    """Per load and policy, simulated minus real: fractions in percentage points,
    latencies in percent of real; per policy the SLO capacity's difference in percent
    and the largest absolute differences over loads. `runs`: real runs made per
    (policy, load, seed) (QuietRunner's), reported per row as the most over seeds."""
    rows = []
    for key, entry in real["loads"].items():
        for p, r in entry["policies"].items():
            s = sim["loads"][key]["policies"][p]
            row: dict[str, Any] = {"load": float(key), "policy": p}
            # what the simulator cannot see: other processes' CPU share, hand-off lags
            row["real_foreign_cpu_frac"] = r.get("foreign_cpu_frac")
            row["real_dispatch_lag_p99_ms"] = r.get("dispatch_lag_p99_ms")
            row["real_runs"] = _runs(runs, p, float(key), real["config"])
            for m in _FRACTIONS:
                row[f"real_{m}"], row[f"sim_{m}"] = r.get(m), s.get(m)
                row[f"d_{m}_pp"] = _diff_pp(r.get(m), s.get(m))
            row.update(_latency_differences(r, s))
            row["by_model"] = _model_differences(r.get("by_model", {}), s.get("by_model", {}))
            rows.append(row)
    per_policy = {}
    for p in real["config"]["policies"]:
        mine = [r for r in rows if r["policy"] == p]
        cap_r = real["slo_capacity"][p].get("rps")
        cap_s = sim["slo_capacity"][p].get("rps")
        per_policy[p] = {
            "real_capacity_rps": cap_r,
            "sim_capacity_rps": cap_s,
            "d_capacity_pct": _diff_pct(cap_r, cap_s),
            **{f"max_abs_d_{m}_pp": _max_abs(mine, f"d_{m}_pp") for m in _FRACTIONS},
            **{f"max_abs_d_{m}_pct": _max_abs(mine, f"d_{m}_pct") for m in _LATENCIES},
            "by_model": _model_maxima(mine),
        }
    return {"by_load": rows, "by_policy": per_policy}


def _latency_differences(real: Mapping[str, Any], sim: Mapping[str, Any]) -> dict[str, Any]:
    """p50 and p99, real and simulated, and their difference in percent of real."""
    row: dict[str, Any] = {}
    for m in _LATENCIES:
        row[f"real_{m}"], row[f"sim_{m}"] = real.get(m), sim.get(m)
        row[f"d_{m}_pct"] = _diff_pct(real.get(m), sim.get(m))
    return row


def _model_differences(
    real: Mapping[str, Mapping[str, Any]], sim: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per model run on both: `_latency_differences`."""
    return {m: _latency_differences(real[m], sim[m]) for m in sorted(set(real) & set(sim))}


def _model_maxima(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per model: the largest absolute latency differences over `rows` (loads)."""
    models = sorted({m for r in rows for m in r["by_model"]})
    return {
        model: {
            f"max_abs_d_{m}_pct": _max_abs(
                [r["by_model"][model] for r in rows if model in r["by_model"]], f"d_{m}_pct"
            )
            for m in _LATENCIES
        }
        for model in models
    }


def _diff_pp(real: float | None, sim: float | None) -> float | None:
    return None if real is None or sim is None else 100.0 * (sim - real)


def _diff_pct(real: float | None, sim: float | None) -> float | None:
    if real is None or sim is None or not real > 0:
        return None
    return 100.0 * (sim - real) / real


def _max_abs(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [abs(r[key]) for r in rows if r[key] is not None]
    return max(values) if values else None


def _runs(
    runs: Mapping[tuple[str, float, int], int] | None,
    policy: str,
    load: float,
    config: Mapping[str, Any],
) -> int | None:
    if runs is None:
        return None
    seed = config.get("seed", 0)
    counts = [runs.get((policy, load, seed + r)) for r in range(config.get("repeats", 1))]
    return max((c for c in counts if c is not None), default=None)
