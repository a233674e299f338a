"""compare's warm-up history and the starting predictors fitted on it.

Every co-locating policy's predictor starts from the same fit: on a `predlat fit` file
where one is given, else on a warm-up history, a mixed-load co-location trace taken on
the compared device (`predlat trace`'s random batch sizes and co-location). What other
processes did meanwhile is in that history as if the device did it: the history is
taken again, up to `WARMUP_TRIES` times in all, while they took more than the
profiler's limit of the CPU (`foreign_cpu_limit()`), and the quietest is kept. A
simulated device calibrated on it (`predlat validate`) inherits its noise: a 2-thread
batch on 2 cores waits for its slower thread, so a neighbour inflates its solo speed
far more than its share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from predlat.devices.factory import make_device
from predlat.errors import ConfigError
from predlat.experiments.compare_runs import concatenate
from predlat.predict.predictors import make_predictor
from predlat.profiling.cpu_meter import CpuMeter, foreign_cpu_limit, quietest
from predlat.profiling.profile import Profile
from predlat.scheduling.policies import solo_prior
from predlat.traces.collect import collect_trace
from predlat.traces.records import BatchRecord

if TYPE_CHECKING:
    from predlat.experiments.compare import CompareConfig

WARMUP_TRIES = 3


def starting_predictors(config: CompareConfig, specs, profile: Profile):
    """Each co-locating policy's predictor, fitted once: from a `predlat fit` file
    where one is given for its predictor, else on the warm-up history. Returns the
    predictors, what they started from (for results.json) and the history."""
    from predlat.predict.persist import load_predictor

    loaded = {}
    for path in config.predictor_files:
        predictor = load_predictor(path, profile)
        loaded[predictor.name] = (predictor, path)
    wanted = {
        config.policy(p).predictor for p in config.policies if not config.policy(p).one_at_a_time
    }
    history: list[BatchRecord] = []
    foreign, tries = None, 0
    if wanted - set(loaded):
        history, foreign, tries = quiet_history(config, specs, profile)
    out, sources = {}, {}
    for name in sorted(wanted):
        if name in loaded:
            out[name], sources[name] = loaded[name][0], f"file {loaded[name][1]}"
        else:
            out[name] = make_predictor(name, profile).fit(history or solo_prior(profile))
            sources[name] = "warm-up history" if history else "solo prior"
    unused = set(loaded) - wanted
    if unused:
        raise ConfigError(
            f"--predictor file(s) for {', '.join(sorted(unused))}: no compared policy "
            f"forecasts with it"
        )
    info: dict[str, Any] = {
        "batches": len(history),
        "seconds": config.train_s if history else 0.0,
        "loads": list(config.train_loads) if history else [],
        "predictors": sources,
        "foreign_cpu_frac": foreign,
        "tries": tries,
    }
    return out, info, history


def quiet_history(
    config: CompareConfig, specs, profile: Profile, tries: int = WARMUP_TRIES
) -> tuple[list[BatchRecord], float | None, int]:
    """The warm-up history taken while other processes took at most the profiler's
    limit of the CPU, or the quietest of `tries`: (history, their CPU share meanwhile,
    histories taken)."""

    def take() -> tuple[list[BatchRecord], float | None]:
        meter = CpuMeter()
        history = training_trace(config, specs, profile)
        return history, meter.foreign_frac() if history else None

    (history, share), made = quietest(take, lambda h: h[1] or 0.0, foreign_cpu_limit(), tries)
    return history, share, made


def training_trace(config: CompareConfig, specs, profile: Profile) -> list[BatchRecord]:
    """The warm-up history: `train_s` seconds in equal parts at each of `train_loads`
    (random batch sizes and co-location, as `predlat trace`), one timeline."""
    if config.train_s <= 0 or not config.train_loads:
        return []
    device = make_device(config.device, slots=config.slots, threads=config.threads)
    try:
        for spec in specs:
            device.load(spec)
        parts = [
            collect_trace(
                device,
                specs,
                profile,
                concurrency=config.slots,
                load=load,
                duration=config.train_s / len(config.train_loads),
                seed=config.seed + 1 + i,
                progress=False,
                max_batch=config.max_batch,
            )
            for i, load in enumerate(config.train_loads)
        ]
    finally:
        device.close()
    return concatenate(parts)


__all__ = ["WARMUP_TRIES", "quiet_history", "starting_predictors", "training_trace"]
