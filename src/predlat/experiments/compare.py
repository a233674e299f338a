"""The scheduling comparison: the same seeded workloads against each policy, on the real
device; the headline is each policy's SLO capacity.

Method
- Models are profiled alone (or the machine's cached profile is reused). Load is a
  fraction of the device capacity as `predlat trace` defines it (`device_capacity`),
  split equally over the models as independent Poisson (or bursty) streams; a fraction
  `hp_frac` of requests is high priority. A request's deadline is `deadline_factor` x
  its model's solo latency at batch 1 (one intra-op thread), or `deadline_ms`, the
  same for every policy.
- Device layout: by default the CPU's spatial regime (slots x threads <= cores); more
  slots give the oversubscribed regime, labelled as such. One-at-a-time policies run
  on one slot: `serial` with every core, `serial-1t` with one thread.
- Every predictive policy plans at the same quantile (`quantile`, or the mean); they
  differ only in their predictor. Each starts from a predictor fitted on the same
  warm-up history (a mixed-load trace collected first, or a `predlat fit` file) and
  keeps learning online if it is an online predictor.
- A sweep runs every policy at every load, `repeats` times (seeds seed, seed + 1, ...),
  in an order shuffled per load and repeat (seeded, recorded). Then, per policy and
  seed, bisection between the highest load that met the SLO and the first that missed
  it finds the SLO capacity (see `capacity`); its standard error is over the seeds.
- Each run gets a fresh runtime (a fresh device and scheduler); requests are submitted
  open loop at their arrival times, with no inputs (the device feeds random ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from predlat.devices.base import regime as device_regime
from predlat.devices.factory import describe_device
from predlat.errors import ConfigError
from predlat.experiments.capacity import Bisection, Slo
from predlat.experiments.compare_results import (
    capacity_section,
    loads_section,
    ratios,
)
from predlat.experiments.compare_runs import (
    DeviceRunner,
    Runner,
    RunResult,
    RunSpec,
    Setup,
)
from predlat.experiments.warmup import starting_predictors
from predlat.models.registry import resolve_models
from predlat.models.zoo import ZOO_NAMES
from predlat.profiling.profile import Profile
from predlat.profiling.profiler import load_or_profile
from predlat.runtime.build import BATCH_SIZES, REPEATS, policy_threads, usable_cores
from predlat.scheduling.policies import (
    DEFAULT_COMPARE_POLICIES,
    Policy,
    get_policy,
)
from predlat.traces.collect import device_capacity
from predlat.workload.arrivals import PROCESSES

# Batches side by side on one accelerator by default: the paper's setting (K = 2).
ACCELERATOR_SLOTS = 2


@dataclass(frozen=True)
class CompareConfig:
    models: tuple[str, ...] = ZOO_NAMES
    policies: tuple[str, ...] = DEFAULT_COMPARE_POLICIES
    loads: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # the sweep that brackets capacity
    duration_s: float = 6.0
    slots: int | None = None  # None: the spatial regime (cores // threads slots)
    threads: int = 1
    device: str = "onnxruntime"  # a make_device name
    deadline_factor: float = 10.0
    deadline_ms: float | None = None
    hp_frac: float = 0.3
    seed: int = 0
    quantile: float | None = 0.95  # every predictive policy's; None: the mean
    # Warm-up history: `train_s` seconds collected in equal parts at these loads.
    train_s: float = 60.0
    train_loads: tuple[float, ...] = (0.3, 0.6, 0.9)
    predictor_files: tuple[str, ...] = ()  # `predlat fit` files, used instead
    max_batch: int = 8
    max_queue: int = 1000
    high_reserve: int = 1
    process: str = "poisson"
    ours: str = "predlat"  # the policy the ratios are about
    repeats: int = 2  # seeds per load and per capacity search
    bisect_steps: int = 2
    slo_hp: float = 0.99
    slo_all: float = 0.95

    def validate(self) -> None:
        if not self.policies:
            raise ConfigError("give at least one policy")
        for p in self.policies:
            get_policy(p)
        if not self.loads or any(not 0 < x <= 4 for x in self.loads):
            raise ConfigError(
                f"loads must be in (0, 4] (fractions of capacity), got "
                f"{', '.join(map(str, self.loads))}"
            )
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s}")
        if self.deadline_ms is None and not self.deadline_factor > 0:
            raise ConfigError(f"deadline factor must be positive, got {self.deadline_factor}")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"deadline must be positive, got {self.deadline_ms} ms")
        if not 0.0 <= self.hp_frac <= 1.0:
            raise ConfigError(f"high-priority fraction must be in [0, 1], got {self.hp_frac}")
        if self.process not in PROCESSES:
            raise ConfigError(f"unknown arrival process '{self.process}'")
        if (self.slots is not None and self.slots < 1) or self.threads < 1:
            raise ConfigError("slots and threads must be at least 1")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")
        if self.bisect_steps < 0:
            raise ConfigError(f"bisection steps must be >= 0, got {self.bisect_steps}")
        if self.quantile is not None and not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"quantile must be in (0, 1) or 'mean', got {self.quantile}")

    def resolved(self, cores: int | None = None) -> CompareConfig:
        """With the slot count settled: on a CPU the spatial regime (cores // threads
        slots), on an accelerator ACCELERATOR_SLOTS, unless `slots` was given."""
        if self.slots is not None:
            return self
        if describe_device(self.device).accelerator:
            return replace(self, slots=ACCELERATOR_SLOTS)
        return replace(self, slots=max(1, (cores or usable_cores()) // self.threads))

    def policy(self, name: str) -> Policy:
        return get_policy(name, self.quantile)


def quick_config(**overrides: Any) -> CompareConfig:
    """A reduced comparison (fewer loads, one seed, one bisection step, short runs)
    that finishes in about three minutes on a small machine."""
    base = CompareConfig(
        loads=(0.3, 0.6, 0.9),
        duration_s=4.0,
        train_s=15.0,
        repeats=1,
        bisect_steps=1,
    )
    return replace(base, **overrides)


def regime(slots: int, threads: int, device: str, cores: int | None = None) -> str:
    """On a CPU: `spatial` when slots x threads <= cores, else `oversubscribed`; on an
    accelerator: `accelerator` (the devices' rule)."""
    accelerator = describe_device(device).accelerator
    return device_regime(accelerator, slots, threads, cores or usable_cores())


ProgressFn = Callable[[str, float], None]  # (what is running, fraction done overall)


def policy_order(policies: Sequence[str], seed: int, *salt: int) -> list[str]:
    """The policies in a seeded random order (salted by load index, repeat, step)."""
    rng = np.random.default_rng([seed, *salt])
    return [policies[i] for i in rng.permutation(len(policies))]


def run_compare(
    config: CompareConfig,
    progress: ProgressFn | None = None,
    show_profiling: bool = False,
    *,
    setup: Setup | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run the whole comparison; returns the results.json content. `setup` and
    `runner` replace the real device (tests)."""
    config.validate()
    config = config.resolved()
    note = progress or (lambda what, frac: None)
    started = time.perf_counter()
    if setup is None:
        note("profiling and warm-up history", 0.0)
        setup = prepare(config, show_profiling)
    setup_s = time.perf_counter() - started
    run = runner or DeviceRunner(config, setup)
    policies = {name: config.policy(name) for name in config.policies}
    seeds = [config.seed + r for r in range(config.repeats)]
    n_policies = len(policies)
    total = n_policies * len(seeds) * (len(config.loads) + config.bisect_steps)
    done = 0

    def one(name: str, load: float, seed: int) -> RunResult:
        nonlocal done
        note(f"load {load:.3g} {name} seed {seed}", done / total)
        result = run(RunSpec(policies[name], load, seed))
        done += 1
        return result

    sweep: dict[float, dict[str, list[RunResult]]] = {}
    orders: dict[float, list[list[str]]] = {}
    for i, load in enumerate(sorted(config.loads)):
        sweep[load] = {p: [] for p in config.policies}
        orders[load] = []
        for r, seed in enumerate(seeds):
            order = policy_order(config.policies, config.seed, 0, i, r)
            orders[load].append(order)
            for name in order:
                sweep[load][name].append(one(name, load, seed))

    slo = Slo(config.slo_hp, config.slo_all)
    searches = {
        p: [
            Bisection.from_sweep(
                {x: slo.met(sweep[x][p][r].metrics) for x in sweep}, config.bisect_steps
            )
            for r in range(len(seeds))
        ]
        for p in config.policies
    }
    step_orders: list[list[str]] = []
    for step in range(config.bisect_steps):
        for r, seed in enumerate(seeds):
            order = policy_order(config.policies, config.seed, 1, step, r)
            step_orders.append(order)
            for name in order:
                search = searches[name][r]
                load = search.next_load()
                if load is None:
                    total -= 1  # nothing left to narrow
                    continue
                search.record(load, slo.met(one(name, load, seed).metrics))
    note("done", 1.0)
    results = build_results(
        config, setup, sweep, orders, searches, step_orders, time.perf_counter() - started
    )
    results["setup_s"] = setup_s  # profiling (when not cached), warm-up history, fitting
    return results


def build_results(
    config: CompareConfig,
    setup: Setup,
    sweep: dict[float, dict[str, list[RunResult]]],
    orders: dict[float, list[list[str]]],
    searches: dict[str, list[Bisection]],
    step_orders: list[list[str]],
    wall_s: float,
) -> dict[str, Any]:
    loads = loads_section(sweep, orders, setup.capacity_rps, config.duration_s)
    capacity = capacity_section(searches, setup.capacity_rps)
    assert config.slots is not None
    layouts = {p: _layout(config, config.policy(p)) for p in config.policies}
    return {
        "config": {
            **asdict(config),
            "models": list(config.models),
            "policies": list(config.policies),
            "loads": list(config.loads),
        },
        "quantile": "mean" if config.quantile is None else config.quantile,
        "regime": regime(config.slots, config.threads, config.device),
        "cores": usable_cores(),
        "layouts": layouts,
        "slo": {"hp_met": config.slo_hp, "met_frac": config.slo_all},
        "capacity_rps": setup.capacity_rps,
        "deadlines_ms": {m: d * 1e3 for m, d in setup.deadlines.items()},
        "warmup": setup.history,
        "wall_s": wall_s,
        "slo_capacity": capacity,
        "bisection_orders": step_orders,
        "ratios": ratios(capacity, loads, config.ours),
        "loads": loads,
    }


def _layout(config: CompareConfig, policy: Policy) -> dict[str, Any]:
    slots = 1 if policy.one_at_a_time else config.slots
    threads = policy_threads(policy, config.device, config.threads)
    assert slots is not None
    return {
        "slots": slots,
        "threads": threads,
        "regime": regime(slots, threads, config.device),
        "plans_at": ("quantile" if policy.plans_at_quantile else "mean"),
    }


# -- setup: profile, deadlines, warm-up history, fitted predictors ------------------------
def prepare(config: CompareConfig, show_profiling: bool = False) -> Setup:
    """Profiles (one per thread count any policy uses), deadlines, the capacity unit
    and every policy's starting predictor."""
    specs = resolve_models(config.models)
    names = tuple(s.name for s in specs)
    profile = _profile(config, specs, config.threads, show_profiling)
    for name in config.policies:  # one-at-a-time policies' own thread counts
        threads = policy_threads(config.policy(name), config.device, config.threads)
        if threads != config.threads:
            _profile(config, specs, threads, show_profiling)
    assert config.slots is not None
    setup = Setup(
        models=names,
        profile=profile,
        capacity_rps=device_capacity(profile, names, config.slots),
        deadlines=_deadlines(config, profile, names),
    )
    setup.predictors, setup.history, setup.records = starting_predictors(config, specs, profile)
    return setup


def _profile(config: CompareConfig, specs, threads: int, show: bool) -> Profile:
    return load_or_profile(
        specs,
        BATCH_SIZES,
        REPEATS,
        intra_op_threads=threads,
        device=config.device,
        progress=show,
    )


def _deadlines(config: CompareConfig, profile: Profile, names: Sequence[str]) -> dict[str, float]:
    if config.deadline_ms is not None:
        return dict.fromkeys(names, config.deadline_ms / 1e3)
    return {m: config.deadline_factor * profile.solo_latency(m, 1) for m in names}
