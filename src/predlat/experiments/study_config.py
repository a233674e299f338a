"""The study's configuration: which traces to collect (the grid), and how to evaluate.

On a CPU, K slots of T threads each are in the *spatial* regime when K x T <= cores
(batches share caches and memory bandwidth) and *oversubscribed* otherwise (the OS
time-slices cores, and what is measured is its scheduler). The grid puts most traces in
the spatial regime, where co-location is meaningful, and keeps a few oversubscribed
ones as their own section. On an accelerator every K is one regime, `accelerator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from predlat.devices.base import regime as device_regime
from predlat.errors import ConfigError
from predlat.predict import PREDICTOR_NAMES
from predlat.profiling.profile import MachineInfo
from predlat.traces.collect import CollectConfig

LOADS = {"low": 0.25, "medium": 0.5, "high": 0.75}
SPATIAL, OVERSUBSCRIBED, ACCELERATOR = "spatial", "oversubscribed", "accelerator"
REGIME_ORDER = (SPATIAL, ACCELERATOR, OVERSUBSCRIBED)  # main result first


def regime_of(k: int, *, threads: int, cores: int, accelerator: bool) -> str:
    """The regime of K slots; the rule itself is the devices' (one definition)."""
    return device_regime(accelerator, k, threads, cores)


def machine_regime(machine: MachineInfo, k: int) -> str:
    return regime_of(
        k, threads=machine.intra_op_threads, cores=machine.cores, accelerator=machine.accelerator
    )


@dataclass(frozen=True)
class TraceSpec:
    """One trace of the study: which models, how many at once, how loaded, how long."""

    name: str
    set_name: str
    models: tuple[str, ...]
    concurrency: int
    load: float
    duration: float
    seed: int

    def collect_config(self) -> CollectConfig:
        return CollectConfig(self.concurrency, self.load, self.duration, self.seed)


@dataclass(frozen=True)
class EvalConfig:
    """How traces are evaluated (the same for measured and recorded traces)."""

    predictors: tuple[str, ...] = PREDICTOR_NAMES
    train_frac: float = 0.75
    quantile: float = 0.95
    window: int = 50  # rolling window (batches) of the shift's error over time
    min_periods: int = 10  # a rolling mean needs at least this many batches
    recovery_factor: float = 1.5  # x the new regime's achievable error

    def validate(self) -> None:
        if not 0 < self.train_frac < 1:
            raise ConfigError(f"train fraction must be in (0, 1), got {self.train_frac}")
        if not self.predictors:
            raise ConfigError("the study needs at least one predictor")
        if not 1 <= self.min_periods <= self.window:
            raise ConfigError("the shift window needs 1 <= min_periods <= window")


@dataclass(frozen=True)
class StudyConfig:
    mode: str
    models: tuple[str, ...]  # model names (a zoo name, or an .onnx file's stem)
    model_sets: dict[str, tuple[str, ...]]
    grid: tuple[TraceSpec, ...]
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    profile_sizes: tuple[int, ...] = (1, 2, 4, 8)
    profile_repeats: int = 20
    noise_sizes: tuple[int, ...] = (1, 2, 4, 8)
    noise_repeats: int = 30
    colocation_ks: tuple[int, ...] = (2, 3, 4)  # empty: no co-location floor
    colocation_batches: int = 40  # per schedule (one schedule per K)
    colocation_repeats: int = 10
    seed: int = 0
    threads: int = 1  # intra-op threads per slot
    sources: dict[str, str] = field(default_factory=dict)  # name -> path, for user files
    device: str = "onnxruntime"  # a make_device name

    def source(self, model: str) -> str:
        return self.sources.get(model, model)

    @property
    def slots(self) -> int:
        return max((*(s.concurrency for s in self.grid), *self.colocation_ks))

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("the study needs at least one model")
        if not self.grid:
            raise ConfigError("the study grid is empty")
        self.evaluation.validate()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_sets"] = {k: list(v) for k, v in self.model_sets.items()}
        return data


def split_model_sets(models: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """All models, and (with two or more) the two halves of the list as subsets A and B."""
    models = tuple(models)
    sets = {f"all{len(models)}": models}
    if len(models) >= 2:
        half = (len(models) + 1) // 2
        sets["A"] = models[:half]
        sets["B"] = models[half:]
    return sets


def grid_points(
    sets: Sequence[str], spatial_ks: Sequence[int], other_ks: Sequence[int], quick: bool
) -> list[tuple[str, str, int]]:
    """(set, load level, K) of every trace. The first spatial K (K = 2 on two cores) gets
    every model set at every load; further K values get the full set at fewer loads."""
    all_name, subsets = sets[0], list(sets[1:])
    points: list[tuple[str, str, int]] = []
    main = spatial_ks[0] if spatial_ks else None
    if main is not None:
        points += [(all_name, level, main) for level in LOADS]
        levels = ["medium"] if quick else list(LOADS)
        points += [(s, level, main) for s in subsets for level in levels]
    for k in spatial_ks[1:]:
        points += [(all_name, level, k) for level in (("medium",) if quick else LOADS)]
    for k in other_ks:
        if quick and k != max(other_ks):
            continue
        keep = ("medium", "high") if not quick and k == max(other_ks) else ("medium",)
        points += [(all_name, level, k) for level in keep]
    return points


def study_config(
    models: Sequence[str],
    mode: str = "full",
    seed: int = 0,
    sources: dict[str, str] | None = None,
    *,
    cores: int = 2,
    threads: int = 1,
    accelerator: bool = False,
) -> StudyConfig:
    """The study's grid for a machine of `cores` cores (slots of `threads` threads).

    full:  K = 2, 3, 4; 30 s per spatial trace, 20 s per oversubscribed one.
    quick: the same shape with one load per subset and K; 12 s per trace, fewer repeats.
    """
    if mode not in ("full", "quick"):
        raise ConfigError(f"unknown study mode '{mode}' (full or quick)")
    quick = mode == "quick"
    sets = split_model_sets(models)
    ks = (2, 3, 4)

    def regime(k: int) -> str:
        return regime_of(k, threads=threads, cores=cores, accelerator=accelerator)

    spatial = [k for k in ks if regime(k) != OVERSUBSCRIBED]
    other = [k for k in ks if regime(k) == OVERSUBSCRIBED]
    points = grid_points(list(sets), spatial, other, quick)

    def duration(k: int) -> float:
        return 12.0 if quick else (30.0 if regime(k) != OVERSUBSCRIBED else 20.0)

    grid = tuple(
        TraceSpec(
            name=f"{s}-k{k}-{level}",
            set_name=s,
            models=sets[s],
            concurrency=k,
            load=LOADS[level],
            duration=duration(k),
            seed=seed + i,
        )
        for i, (s, level, k) in enumerate(points)
    )
    return StudyConfig(
        mode=mode,
        models=tuple(models),
        model_sets=sets,
        grid=grid,
        profile_repeats=10 if quick else 20,
        noise_repeats=10 if quick else 30,
        colocation_ks=(2, 4) if quick else ks,
        colocation_batches=30 if quick else 40,
        colocation_repeats=6 if quick else 10,
        seed=seed,
        threads=threads,
        sources=dict(sources or {}),
    )
