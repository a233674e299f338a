"""`predlat simulate`: the scheduling comparison on simulated devices, at cluster scale.

Each (load, policy) run builds a fresh cluster (`predlat.sim.cluster`) of N simulated
devices cycling over the given device.json files or presets, and streams the same seeded
requests through it. Load is a fraction of the cluster's capacity as `predlat compare`
defines it (`device_capacity`, summed over devices); with a CSV or Azure trace the load
is the trace's own rate over that capacity. Results use `predlat compare`'s
results.json schema (`build_results`), plus wall time, `simulated_requests_per_wall_s`
per run and overall, and each policy's SLO capacity (the highest offered rate at which
it met `slo` of all deadlines) beside the oracle's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from predlat.errors import ConfigError
from predlat.experiments.compare_results import loads_section
from predlat.experiments.compare_runs import RunResult
from predlat.scheduling.scheduler import SchedulerConfig
from predlat.sim.arrivals import csv_requests, synthetic_requests
from predlat.sim.cluster import CLUSTER_ROUTES, SIM_POLICIES, build_cluster
from predlat.sim.device_file import DeviceSpec, load_device
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
    quantile: float = 0.95
    max_batch: int = 8
    max_queue: int = 1000
    high_reserve: int = 1
    keep_requests: bool = False
    slo: float = 0.99  # fraction of deadlines met that defines SLO capacity
    ours: str = "predlat"

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
        if self.slots is not None and self.slots < 1:
            raise ConfigError("slots must be at least 1")

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
    runs: dict[float, dict[str, list[RunResult]]] = {}
    walls: dict[float, dict[str, tuple[float, float]]] = {}
    kept: dict[str, list] = {}
    total, done, sim_wall, simulated = len(loads) * len(config.policies), 0, 0.0, 0
    for load in loads:
        runs[load], walls[load] = {}, {}
        for policy in config.policies:
            note(f"load {load:g} {policy}", done / total)
            sim = build_cluster(
                specs,
                config.devices,
                policy,
                route=config.route,
                slots=config.slots,
                seed=config.seed,
                quantile=config.quantile,
                config=SchedulerConfig(
                    config.max_batch, config.max_queue, high_reserve=config.high_reserve
                ),
            )
            stats, wall = sim.run_stream(
                _requests(config, load, capacity, models, deadlines), keep=config.keep_requests
            )
            metrics = stats.summary(sim.busy_slot_s(), sim.slots())
            metrics["live_forecast_err"] = metrics.pop("pred_mean_rel_err", float("nan"))
            runs[load][policy] = [RunResult(policy, load, metrics, stats.outcomes)]
            walls[load][policy] = (wall, stats.requests / max(wall, 1e-9))
            if config.keep_requests:
                kept[f"{load:g}/{policy}"] = stats.outcomes
            sim_wall += wall
            simulated += stats.requests
            done += 1
    note("done", 1.0)
    results: dict[str, Any] = {
        "config": {
            "models": list(models),
            "policies": list(config.policies),
            "loads": list(loads),
            "device": f"simulated: {config.devices} x {', '.join(config.device)}",
        },
        "quantile": config.quantile,
        "regime": "simulated",
        "capacity_rps": capacity,
        "deadlines_ms": {m: deadlines[m] * 1e3 for m in models},
        "wall_s": time.perf_counter() - started,
        "loads": loads_section(runs, {x: [list(config.policies)] for x in runs}, capacity, 0.0),
    }
    for load, by_policy in walls.items():
        for policy, (wall, rate) in by_policy.items():
            entry = results["loads"][f"{load:g}"]["policies"][policy]
            entry["wall_s"], entry["simulated_requests_per_wall_s"] = wall, rate
    results["simulate"] = {
        **asdict(config),
        "models": models,
        "devices_described": [s.name for s in specs],
    }
    results["simulated_requests"] = simulated
    results["simulated_requests_per_wall_s"] = simulated / max(sim_wall, 1e-9)
    results["slo_capacity"] = slo_capacity(results, config.slo, config.ours)
    results["_outcomes"] = kept  # removed before writing; the CLI writes them when asked
    return results


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


def slo_capacity(results: dict[str, Any], slo: float, ours: str) -> dict[str, Any]:
    """Per policy, the highest offered rate (requests/s) among the loads run at which it
    met at least `slo` of all deadlines (None: at none), and ours over the oracle's."""
    cap: dict[str, float | None] = {}
    for p in results["config"]["policies"]:
        ok = [
            e["offered_rps"]
            for e in results["loads"].values()
            if (e["policies"][p].get("met_frac") or 0.0) >= slo
        ]
        cap[p] = max(ok) if ok else None
    ratio = None
    if cap.get(ours) is not None and cap.get("oracle"):
        ratio = cap[ours] / cap["oracle"]
    return {"slo": slo, "rps": cap, "ours_vs_oracle": ratio}
