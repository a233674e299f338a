"""Collect a co-location trace on a real device under an open-loop workload.

Requests of each model arrive as independent Poisson streams and wait in per-model
queues. A dispatcher (random_dispatch) runs up to K batches at once, one per slot, and
reacts to completions through the device's callback. Batch sizes are drawn at random so
that a trace covers small and large batches beside every kind of co-runner, which is what
predictors need to learn from; the trace is a measurement, not a serving policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from predlat.devices.base import Device
from predlat.errors import ConfigError, PredlatError, require
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.traces.cpu import CPU_SAMPLE_S, CpuMeter
from predlat.traces.random_dispatch import CollectionRun, RandomDispatcher
from predlat.traces.records import BatchRecord, attach_timelines
from predlat.traces.summary import TraceSummary, summarize
from predlat.workload.arrivals import open_loop_workload

# Above this many requests the workload itself would not fit comfortably in memory, and
# the dispatcher could not keep up anyway: the load or duration is a mistake.
MAX_REQUESTS = 2_000_000
_Dispatcher = RandomDispatcher  # (the name tests know it by)

__all__ = [
    "CPU_SAMPLE_S",
    "MAX_REQUESTS",
    "CollectConfig",
    "Collection",
    "CpuMeter",
    "TraceSummary",
    "collect",
    "collect_trace",
    "device_capacity",
    "parallel_capacity",
    "summarize",
]


@dataclass(frozen=True)
class CollectConfig:
    concurrency: int  # K: batches at once, slots 0..K-1 of the device
    load: float  # target fraction of `device_capacity`
    duration: float  # seconds of arrivals
    seed: int = 0
    max_batch: int = 8
    mid_batch: int = 4  # the batch size `device_capacity` is defined with

    def validate(self) -> None:
        require(self.concurrency >= 1, f"concurrency must be at least 1, got {self.concurrency}")
        require(
            0 < self.load <= 4, f"load must be in (0, 4] (a fraction of capacity), got {self.load}"
        )
        require(self.duration > 0, f"duration must be positive, got {self.duration}")
        require(self.max_batch >= 1, f"max batch must be at least 1, got {self.max_batch}")
        require(self.mid_batch >= 1, f"mid batch must be at least 1, got {self.mid_batch}")


@dataclass
class Collection:
    """A collected trace and how its workload went."""

    records: list[BatchRecord]
    config: CollectConfig
    models: list[str]
    capacity_rps: float
    rates: dict[str, float]  # requests/s per model
    requests: int  # arrivals generated
    served: int  # requests in finished batches
    dropped: int  # still queued when arrivals stopped; never run
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self, profile: Profile | None = None) -> dict[str, Any]:
        """File-level facts for `write_trace`."""
        meta: dict[str, Any] = {
            "models": list(self.models),
            "concurrency": self.config.concurrency,
            "load": self.config.load,
            "duration_s": self.config.duration,
            "seed": self.config.seed,
            "max_batch": self.config.max_batch,
            "capacity_rps": self.capacity_rps,
            "rates_rps": dict(self.rates),
            "requests": self.requests,
            "served": self.served,
            "dropped": self.dropped,
            "wall_s": self.wall_s,
            "clock": "seconds since the start of collection",
            **self.extra,
        }
        if profile is not None:
            meta["machine"] = asdict(profile.machine)
        return meta


def parallel_capacity(profile: Profile, concurrency: int) -> int:
    """How many batches the device can run at full speed at once: on a CPU, the cores
    divided by each session's intra-op threads (and at most K); elsewhere 1, because a
    batch alone already owns the accelerator."""
    machine = profile.machine
    if machine.accelerator:
        return 1
    cores = machine.cores or os.cpu_count() or 1
    return max(1, min(concurrency, cores // max(1, machine.intra_op_threads)))


def device_capacity(
    profile: Profile, models: Sequence[str], concurrency: int, mid_batch: int = 4
) -> float:
    """Device capacity in requests/s, the unit of `load`.

    Capacity is the total request rate, split equally across `models`, at which the device
    would be busy all the time if it ran mid-size batches (`mid_batch` requests) each alone
    at its profiled solo speed on every parallel unit (`parallel_capacity`):

        capacity = P / mean_m( S(m, mid_batch) / mid_batch )

    with S the solo median latency. Load L means arrivals at L x capacity. Interference
    is deliberately left out: it is what the trace measures, so at L near 1 with K > P the
    device is in fact overloaded and queues grow.
    """
    if not models:
        raise ConfigError("at least one model is needed")
    per_request = [profile.solo_latency(m, mid_batch) / mid_batch for m in models]
    mean_cost = float(np.mean(per_request))
    if not mean_cost > 0:
        raise PredlatError("the profile has zero solo latencies; re-profile the models")
    return parallel_capacity(profile, concurrency) / mean_cost


def collect(
    device: Device,
    specs: Sequence[ModelSpec],
    profile: Profile,
    config: CollectConfig,
    *,
    progress: bool = True,
    on_tick: Callable[[float], None] | None = None,
    console: Console | None = None,
) -> Collection:
    """Run the open-loop workload of `config` on `device` and return the trace.

    `on_tick(elapsed_s)` is called about ten times a second (for an outer progress bar).
    Times in the records are seconds since the start of collection, on the device clock.
    """
    config.validate()
    if not specs:
        raise ConfigError("at least one model is needed")
    if device.num_slots < config.concurrency:
        raise ConfigError(
            f"concurrency {config.concurrency} needs {config.concurrency} slots; "
            f"the device has {device.num_slots}"
        )
    models = [s.name for s in specs]
    for spec in specs:
        device.load(spec)
    capacity = device_capacity(profile, models, config.concurrency, config.mid_batch)
    rate = capacity * config.load / len(models)
    expected = rate * len(models) * config.duration
    if expected > MAX_REQUESTS:
        raise ConfigError(
            f"load {config.load} for {config.duration:g} s means ~{expected:,.0f} requests "
            f"(capacity {capacity:,.0f} req/s); lower the load or the duration"
        )
    rates = {m: rate for m in models}
    arrivals = open_loop_workload(rates, config.duration, config.seed)
    dispatcher = RandomDispatcher(rates, config.max_batch, np.random.default_rng(config.seed + 1))
    run = CollectionRun(
        device, config, dispatcher, [a.time for a in arrivals], [a.model for a in arrivals]
    )
    console = console or Console(stderr=True)
    if progress:
        columns = (
            TextColumn("[bold]trace[/] K={task.fields[k]} load={task.fields[load]:.2f}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TextColumn("{task.fields[batches]} batches"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(
                "trace", total=config.duration, k=config.concurrency, load=config.load, batches=0
            )

            def tick(elapsed: float) -> None:
                bar.update(task, completed=min(elapsed, config.duration), batches=len(run.done))
                if on_tick:
                    on_tick(elapsed)

            run.loop(tick)
    else:
        run.loop(on_tick)
    if run.failure:
        raise PredlatError(f"a batch failed during trace collection: {run.failure}")
    if progress and run.dropped:
        console.print(
            f"stopped arrivals at {config.duration:g} s; dropped {run.dropped} queued "
            "requests that were never dispatched"
        )
    served = sum(r.batch_size for r in run.done)
    return Collection(
        records=attach_timelines(run.done),
        config=config,
        models=models,
        capacity_rps=capacity,
        rates=rates,
        requests=len(arrivals),
        served=served,
        dropped=run.dropped,
        wall_s=run.wall_s,
        extra={
            "device": getattr(device, "name", "device"),
            "foreign_cpu_frac": run.meter.foreign_frac(),
            "foreign_cpu_samples": run.cpu_samples,
        },
    )


def collect_trace(
    device: Device,
    specs: Sequence[ModelSpec],
    profile: Profile,
    *,
    concurrency: int,
    load: float,
    duration: float,
    seed: int = 0,
    progress: bool = True,
    max_batch: int = 8,
) -> list[BatchRecord]:
    """The finished batches (with timelines) of an open-loop run; see `collect`."""
    config = CollectConfig(concurrency, load, duration, seed, max_batch)
    return collect(device, specs, profile, config, progress=progress).records
