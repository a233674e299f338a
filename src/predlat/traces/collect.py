"""Collect a co-location trace on a real device under an open-loop workload.

Requests of each model arrive as independent Poisson streams and wait in per-model
queues. A dispatcher on a control thread runs up to K batches at once, one per slot, and
reacts to completions through the device's callback. Batch sizes are drawn at random so
that a trace covers small and large batches beside every kind of co-runner, which is what
predictors need to learn from; the trace is a measurement, not a serving policy.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from predlat.devices.base import BatchJob, BatchResult, Device
from predlat.errors import ConfigError, PredlatError
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord, attach_timelines
from predlat.workload.arrivals import open_loop_workload

# Above this many requests the workload itself would not fit comfortably in memory, and
# the dispatcher could not keep up anyway: the load or duration is a mistake.
MAX_REQUESTS = 2_000_000
_TICK_S = 0.1  # progress refresh period
CPU_SAMPLE_S = 0.5  # period of the other-processes CPU samples kept with a trace


@dataclass(frozen=True)
class CollectConfig:
    concurrency: int  # K: batches at once, slots 0..K-1 of the device
    load: float  # target fraction of `device_capacity`
    duration: float  # seconds of arrivals
    seed: int = 0
    max_batch: int = 8
    mid_batch: int = 4  # the batch size `device_capacity` is defined with

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0 < self.load <= 4:
            raise ConfigError(f"load must be in (0, 4] (a fraction of capacity), got {self.load}")
        if not self.duration > 0:
            raise ConfigError(f"duration must be positive, got {self.duration}")
        if self.max_batch < 1:
            raise ConfigError(f"max batch must be at least 1, got {self.max_batch}")
        if self.mid_batch < 1:
            raise ConfigError(f"mid batch must be at least 1, got {self.mid_batch}")


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


class CpuMeter:
    """Share of the machine's CPU time that other processes used between two readings.

    On a shared machine, other work is interference that no co-runner feature can
    explain; traces record it so that reports can say how much there was. Linux only
    (reads /proc); elsewhere `foreign_frac` is None.
    """

    def __init__(self) -> None:
        self._start = self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
            with open("/proc/self/stat") as fh:
                own = fh.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...
        busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
        total = busy + fields[3] + fields[4]
        return busy, total, int(own[11]) + int(own[12])  # own utime + stime, all threads

    def foreign_frac(self) -> float | None:
        """Other processes' CPU time / all CPU time available, since construction."""
        return self._frac(self._start, self._read())

    def sample(self) -> float | None:
        """The same since the previous `sample` (or construction)."""
        now = self._read()
        frac, self._last = self._frac(self._last, now), now
        return frac

    @staticmethod
    def _frac(start: tuple[int, int, int] | None, end: tuple[int, int, int] | None) -> float | None:
        if start is None or end is None:
            return None
        busy, total, own = (e - s for e, s in zip(end, start, strict=True))
        return min(1.0, max(0.0, (busy - own) / total)) if total > 0 else None


class _Dispatcher:
    """Per-model queues and the greedy batching rule (state of one collection run).

    Each model's queue has a random target batch size in 1..max_batch. A queue is ready
    when it holds the target, or when its oldest request has waited the time the target
    takes to arrive on average (target / rate), so batches of every size occur at any
    load. Whenever a slot is free and a queue is ready, the queue whose head arrived
    first is dispatched.
    """

    def __init__(self, rates: dict[str, float], max_batch: int, rng: np.random.Generator):
        self.rates = rates
        self.max_batch = max_batch
        self.rng = rng
        self.queues: dict[str, deque[float]] = {m: deque() for m in rates}
        self.targets = {m: self._draw() for m in rates}

    def _draw(self) -> int:
        return int(self.rng.integers(1, self.max_batch + 1))

    def window(self, model: str) -> float:
        rate = self.rates[model]
        return self.targets[model] / rate if rate > 0 else 0.0

    def ready_at(self, model: str) -> float | None:
        """When the queue becomes ready (None if empty)."""
        q = self.queues[model]
        if not q:
            return None
        if len(q) >= self.targets[model]:
            return q[0]
        return q[0] + self.window(model)

    def pick(self, now: float) -> tuple[str, int] | None:
        """The model and batch size to dispatch now, or None."""
        best: tuple[float, str] | None = None
        for model, q in self.queues.items():
            at = self.ready_at(model)
            if at is not None and at <= now and (best is None or q[0] < best[0]):
                best = (q[0], model)
        if best is None:
            return None
        model = best[1]
        q = self.queues[model]
        size = min(len(q), self.targets[model], self.max_batch)
        for _ in range(size):
            q.popleft()
        self.targets[model] = self._draw()
        return model, size

    def next_ready(self) -> float | None:
        times = [t for m in self.queues if (t := self.ready_at(m)) is not None]
        return min(times) if times else None

    def drop_all(self) -> int:
        dropped = sum(len(q) for q in self.queues.values())
        for q in self.queues.values():
            q.clear()
        return dropped


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
    dispatcher = _Dispatcher(rates, config.max_batch, np.random.default_rng(config.seed + 1))
    run = _Run(device, config, dispatcher, [a.time for a in arrivals], [a.model for a in arrivals])
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


class _Run:
    """The control loop of one collection: admits arrivals, dispatches, records ends."""

    def __init__(
        self,
        device: Device,
        config: CollectConfig,
        dispatcher: _Dispatcher,
        times: list[float],
        models: list[str],
    ) -> None:
        self.device = device
        self.config = config
        self.dispatcher = dispatcher
        self.times = times
        self.models = models
        self.events: queue.SimpleQueue[BatchResult] = queue.SimpleQueue()
        self.free = list(range(config.concurrency))
        self.dispatch_at: dict[int, float] = {}
        self.done: list[BatchRecord] = []
        self.dropped = 0
        self.failure: str | None = None
        self.wall_s = 0.0
        self.t0 = 0.0
        self.next_id = 0
        self.meter = CpuMeter()
        self.cpu_samples: list[tuple[float, float]] = []  # (end of period, foreign share)

    def loop(self, tick: Callable[[float], None] | None) -> None:
        t0 = self.t0 = self.device.now()
        i, closed, last_tick, last_sample = 0, False, -1.0, 0.0
        self.meter.sample()
        while True:
            now = self.device.now() - t0
            while not closed and i < len(self.times) and self.times[i] <= now:
                self.dispatcher.queues[self.models[i]].append(self.times[i])
                i += 1
            if not closed and (now >= self.config.duration or self.failure):
                closed = True  # arrivals are over: what is still queued never runs
                self.dropped = self.dispatcher.drop_all()
            if not closed:
                self._dispatch(now)
            if closed and len(self.free) == self.config.concurrency:
                break
            if tick and now - last_tick >= _TICK_S:
                tick(now)
                last_tick = now
            if now - last_sample >= CPU_SAMPLE_S:
                self._sample_cpu(now)
                last_sample = now
            wake = [now + _TICK_S]
            if not closed:
                wake.append(self.config.duration)
                if i < len(self.times):
                    wake.append(self.times[i])
                if self.free and (ready := self.dispatcher.next_ready()) is not None:
                    wake.append(ready)
            self._wait(max(0.0, min(wake) - (self.device.now() - t0)))
        self.wall_s = self.device.now() - t0
        self._sample_cpu(self.wall_s)
        if tick:
            tick(self.wall_s)

    def _sample_cpu(self, now: float) -> None:
        frac = self.meter.sample()
        if frac is not None:
            self.cpu_samples.append((round(now, 3), round(frac, 4)))

    def _dispatch(self, now: float) -> None:
        while self.free:
            choice = self.dispatcher.pick(now)
            if choice is None:
                return
            model, size = choice
            slot = self.free.pop(0)
            batch_id = self.next_id
            self.next_id += 1
            self.dispatch_at[batch_id] = self.device.now() - self.t0
            self.device.submit(slot, BatchJob(batch_id, model, size), self.events.put)

    def _wait(self, timeout: float) -> None:
        try:
            result = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        self._finish(result)
        while True:  # several batches may have ended together
            try:
                self._finish(self.events.get_nowait())
            except queue.Empty:
                return

    def _finish(self, result: BatchResult) -> None:
        self.free.append(result.slot)
        self.free.sort()
        if result.error:
            self.failure = (
                self.failure or f"{result.model} batch {result.batch_size}: {result.error}"
            )
            return
        self.done.append(
            BatchRecord.from_result(result, self.dispatch_at.pop(result.batch_id), t0=self.t0)
        )


@dataclass(frozen=True)
class TraceSummary:
    batches: int
    mean_batch_size: float
    mean_concurrency: float  # batches running on average while the device is busy
    overlapped_frac: float  # batches with at least one co-runner
    mean_slowdown: float  # latency / profiled solo latency
    busy_frac: float  # share of the trace's span with at least one batch running
    per_model: dict[str, int]  # batches per model


def summarize(records: Sequence[BatchRecord], profile: Profile | None = None) -> TraceSummary:
    """A few numbers to sanity-check a trace."""
    if not records:
        return TraceSummary(0, 0.0, 0.0, 0.0, float("nan"), 0.0, {})
    busy = _union_length([(r.start, r.end) for r in records])
    total = sum(r.latency for r in records)
    span = max(r.end for r in records) - min(r.start for r in records)
    slowdowns = (
        [r.latency / profile.solo_latency(r.model, r.batch_size) for r in records]
        if profile is not None
        else []
    )
    per_model: dict[str, int] = {}
    for r in records:
        per_model[r.model] = per_model.get(r.model, 0) + 1
    return TraceSummary(
        batches=len(records),
        mean_batch_size=float(np.mean([r.batch_size for r in records])),
        mean_concurrency=total / busy if busy > 0 else 0.0,
        overlapped_frac=float(np.mean([bool(r.timeline) for r in records])),
        mean_slowdown=float(np.mean(slowdowns)) if slowdowns else float("nan"),
        busy_frac=busy / span if span > 0 else 0.0,
        per_model=dict(sorted(per_model.items())),
    )


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total
