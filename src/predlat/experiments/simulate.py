"""`predlat simulate`: the scheduling comparison on simulated devices, at cluster scale.

Each (load, policy) run builds a fresh cluster (`predlat.sim.cluster`) of N simulated
devices cycling over the given device.json files or presets, and streams the same seeded
requests through it. Load is a fraction of the cluster's capacity as `predlat compare`
defines it (`device_capacity`, summed over devices); with a CSV or Azure trace the load
is the trace's own rate over that capacity. Results use `predlat compare`'s
results.json schema (`build_results`), plus wall time, `simulated_requests_per_wall_s`
per run and overall. Each policy's SLO capacity is compare's (>= 99% of high-priority and
>= 95% of all deadlines met): the sweep brackets it, then `bisect_steps` runs per policy
narrow the bracket; `ratios` gives ours over every other policy, the oracle included.

The runs need no device, so with `jobs` > 1 they run in worker processes
(`predlat.experiments.parallel`): the sweep's runs all at once, then the policies'
bisections step by step, each step's runs at once. Under round-robin each run is also
split into `jobs` shards of its devices (`predlat.sim.shard`, exact), so one large run
uses every core too. Every run is seeded by the config alone, so the results are the
same whatever `jobs` is; only the wall times differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from predlat.errors import ConfigError
from predlat.experiments.capacity import Bisection, Slo
from predlat.experiments.compare_results import capacity_section, loads_section, ratios
from predlat.experiments.compare_runs import RunResult
from predlat.experiments.parallel import Workers, check_jobs
from predlat.scheduling.scheduler import SchedulerConfig
from predlat.sim.arrivals import csv_requests, synthetic_requests
from predlat.sim.cluster import CLUSTER_ROUTES, SIM_POLICIES, build_cluster
from predlat.sim.device_file import DeviceSpec, load_device
from predlat.sim.shard import SHARDABLE_ROUTES, ShardRun, blocks, merge, run_block
from predlat.traces.collect import device_capacity


@dataclass(frozen=True)
class SimulateConfig:
    device: tuple[str, ...] = ("gpu",)  # device.json paths or presets, cycled over devices
    devices: int = 1
    requests: int = 100_000  # per (load, policy) run (a CSV: at most this many)
    policies: tuple[str, ...] = SIM_POLICIES
    loads: tuple[float, ...] = (0.5, 0.7, 0.9, 1.1)
    route: str = "predlat"
    arrivals: str = "poisson"  # poisson | bursty | a CSV path (requests or Azure trace)
    slots: int | None = None  # default: each device file's
    deadline_factor: float = 10.0
    deadline_ms: float | None = None
    hp_frac: float = 0.3
    seed: int = 0
    quantile: float | None = 0.95  # None: every predictive policy plans at the mean
    max_batch: int = 8
    max_queue: int = 1000
    high_reserve: int = 1
    keep_requests: bool = False
    # SLO capacity as `predlat compare` defines it: >= 99% of high-priority, >= 95% of all met
    slo: Slo = field(default_factory=Slo)
    bisect_steps: int = 4  # per policy, after the sweep (cheap here: no device time)
    ours: str = "predlat"
    jobs: int = 1  # worker processes for the runs (1: all in this process)

    def validate(self) -> None:
        bad = [p for p in self.policies if p not in SIM_POLICIES]
        if bad or not self.policies:
            raise ConfigError(f"policies: choose from {', '.join(SIM_POLICIES)}")
        if self.route not in CLUSTER_ROUTES:
            raise ConfigError(f"route: choose from {', '.join(CLUSTER_ROUTES)}")
        if self.devices < 1 or self.requests < 1:
            raise ConfigError("devices and requests must be at least 1")
        if not self.loads or any(not 0 < x <= 4 for x in self.loads):
            raise ConfigError("loads must be in (0, 4] (fractions of capacity)")
        if not 0 <= self.hp_frac <= 1:
            raise ConfigError(f"high-priority fraction must be in [0, 1], got {self.hp_frac}")
        if self.bisect_steps < 0:
            raise ConfigError(f"bisect steps must be >= 0, got {self.bisect_steps}")
        if self.slots is not None and self.slots < 1:
            raise ConfigError("slots must be at least 1")
        check_jobs(self.jobs)

    @property
    def is_csv(self) -> bool:
        return self.arrivals not in ("poisson", "bursty")


ProgressFn = Callable[[str, float], None]


def run_simulate(config: SimulateConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    config.validate()
    note = progress or (lambda what, frac: None)
    started = time.perf_counter()
    specs = [load_device(d) for d in config.device]
    models = sorted(set.intersection(*(set(s.models) for s in specs)))
    if not models:
        raise ConfigError("the devices share no model")
    deadlines = _deadlines(config, specs[0], models)
    capacity = sum(
        device_capacity(
            specs[d % len(specs)].profile(), models, config.slots or specs[d % len(specs)].slots
        )
        for d in range(config.devices)
    )
    loads = config.loads
    if config.is_csv:
        reqs = csv_requests(Path(config.arrivals), models, deadlines.get, config.requests)
        span = max(reqs[-1].arrival, 1e-9) if len(reqs) > 1 else 1.0
        loads = (len(reqs) / span / capacity,)
    shards = config.jobs if config.route in SHARDABLE_ROUTES else 1
    runner = _Runner(config, specs, models, deadlines, capacity, blocks(config.devices, shards))
    tally = _Tally(note, len(loads) * len(config.policies) + _bisections(config))
    sweep = [(load, policy) for load in loads for policy in config.policies]
    with Workers(config.jobs) as workers:
        found: dict[tuple[float, str], RunResult] = {}
        for i, result in runner.run_all(workers, sweep):
            found[sweep[i]] = result
            tally.add([result], "load {:g} {}".format(*sweep[i]))
        runs = {x: {p: [found[x, p]] for p in config.policies} for x in loads}
        searched = _search(workers, runner, runs, tally)
    searches = {p: [searched[p]] for p in config.policies}
    note("done", 1.0)
    loads_out = loads_section(runs, {x: [list(config.policies)] for x in runs}, capacity, 0.0)
    for load, by_policy in runs.items():
        for policy, (result,) in by_policy.items():
            entry = loads_out[f"{load:g}"]["policies"][policy]
            entry["wall_s"] = result.metrics["wall_s"]
            entry["simulated_requests_per_wall_s"] = result.metrics["simulated_requests_per_wall_s"]
    slo_cap = capacity_section(searches, capacity)
    wall = time.perf_counter() - started
    return {
        "config": {
            "models": list(models),
            "policies": list(config.policies),
            "loads": list(loads),
            "device": f"simulated: {config.devices} x {', '.join(config.device)}",
        },
        "quantile": config.quantile,
        "regime": "simulated",
        "capacity_rps": capacity,
        "slo": {"hp_met": config.slo.hp, "met_frac": config.slo.all},
        "deadlines_ms": {m: deadlines[m] * 1e3 for m in models},
        "wall_s": wall,
        "loads": loads_out,
        "slo_capacity": slo_cap,
        "ratios": ratios(slo_cap, loads_out, config.ours),
        "simulate": {
            **asdict(config),
            "models": models,
            "devices_described": [x.name for x in specs],
        },
        "simulated_requests": tally.simulated,
        # per second of one process's wall time, over every run (as with one job); and
        # over the whole command's, which several jobs shorten
        "simulated_requests_per_wall_s": tally.simulated / max(tally.wall, 1e-9),
        "jobs": config.jobs,
        "simulated_requests_per_command_s": tally.simulated / max(wall, 1e-9),
        "_outcomes": tally.kept,  # removed before writing; the CLI writes them when asked
    }


def _bisections(config: SimulateConfig) -> int:
    return 0 if config.is_csv else config.bisect_steps * len(config.policies)


class _Runner:
    """Each (load, policy) run on a fresh cluster, in shards of its devices (one: the
    whole cluster). Picklable: worker processes run its parts."""

    def __init__(self, config, specs, models, deadlines, capacity, shards: list[range]):
        self.config, self.specs, self.models = config, specs, models
        self.deadlines, self.capacity, self.shards = deadlines, capacity, shards

    def part(self, load: float, policy: str, block: range) -> ShardRun:
        """One shard of one run; its wall time counts building its devices."""
        c = self.config
        build = partial(
            build_cluster,
            self.specs,
            c.devices,
            policy,
            route=c.route,
            slots=c.slots,
            seed=c.seed,
            quantile=c.quantile,
            config=SchedulerConfig(c.max_batch, c.max_queue, high_reserve=c.high_reserve),
        )
        requests = _requests(c, load, self.capacity, self.models, self.deadlines)
        return run_block(lambda b: build(only=b), requests, c.devices, block, c.keep_requests)

    def run_all(
        self, workers: Workers, asks: Sequence[tuple[float, str]]
    ) -> Iterator[tuple[int, RunResult]]:
        """(index, result) of each (load, policy) run asked, as its last shard ends."""
        k = len(self.shards)
        tasks = [(self.part, (*ask, block)) for ask in asks for block in self.shards]
        parts: dict[int, list[ShardRun]] = {}
        for i, part in workers.run(tasks):
            got = parts.setdefault(i // k, [])
            got.append(part)
            if len(got) == k:
                yield i // k, self._result(*asks[i // k], parts.pop(i // k))

    @staticmethod
    def _result(load: float, policy: str, parts: list[ShardRun]) -> RunResult:
        run = merge(parts)
        metrics = run.summary()
        metrics["live_forecast_err"] = metrics.pop("pred_mean_rel_err", float("nan"))
        metrics["wall_s"] = run.wall_s  # its shards' summed: one process's worth
        metrics["simulated_requests_per_wall_s"] = run.stats.requests / max(run.wall_s, 1e-9)
        kept = sorted(run.stats.outcomes, key=lambda o: o.request_id)  # however sharded
        return RunResult(policy, load, metrics, kept)


def _search(workers: Workers, runner: _Runner, runs, tally: _Tally) -> dict[str, Bisection]:
    """Each policy's SLO-capacity bisection after the sweep, all policies' next runs at
    once (one policy's runs depend on each other, so they come in steps)."""
    slo = runner.config.slo
    steps = 0 if runner.config.is_csv else runner.config.bisect_steps  # a trace: one load
    searches = {
        p: Bisection.from_sweep({x: slo.met(r[p][0].metrics) for x, r in runs.items()}, steps)
        for p in runner.config.policies
    }
    while True:
        asks = [(s.next_load(), p) for p, s in searches.items()]
        asks = [(x, p) for x, p in asks if x is not None]
        if not asks:
            return searches
        for i, result in runner.run_all(workers, asks):
            load, policy = asks[i]
            searches[policy].record(load, slo.met(result.metrics))
            tally.add([result], f"capacity of {policy}")


class _Tally:
    """Simulated requests and wall time over every run, sweep and bisection alike; the
    kept outcomes; progress as runs come back."""

    def __init__(self, note: ProgressFn, total: int) -> None:
        self.note, self.total = note, max(1, total)
        self.simulated, self.wall, self.finished = 0, 0.0, 0
        self.kept: dict[str, list] = {}

    def add(self, runs: Sequence[RunResult], what: str) -> None:
        for run in runs:
            self.simulated += int(run.metrics["requests"])
            self.wall += run.metrics["wall_s"]
            if run.outcomes:
                self.kept[f"{run.load:g}/{run.policy}"] = run.outcomes
        self.finished += len(runs)
        self.note(what, self.finished / self.total)


def _requests(config, load, capacity, models, deadlines) -> Iterator:
    if config.is_csv:
        return iter(csv_requests(Path(config.arrivals), models, deadlines.get, config.requests))
    rate = load * capacity / len(models)
    return synthetic_requests(
        dict.fromkeys(models, rate),
        config.requests,
        deadlines.__getitem__,
        seed=config.seed,
        process=config.arrivals,
        hp_frac=config.hp_frac,
    )


def _deadlines(config: SimulateConfig, spec: DeviceSpec, models: Sequence[str]) -> dict:
    if config.deadline_ms is not None:
        return dict.fromkeys(models, config.deadline_ms / 1e3)
    return {m: config.deadline_factor * spec.models[m].latency(1) for m in models}
