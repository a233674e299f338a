"""A simulated accelerator on a virtual clock, with a known interference law.

It implements the Device protocol, so a scheduler cannot tell it from a real device, but
time only moves when its driver moves it: thousands of devices and millions of requests
simulate in seconds, and the same seed gives the same run.

Ground truth (documented so experiments can reason about it; the law's parameters are
`predlat.devices.sim_law.InterferenceLaw`):

- A batch of `model` at batch size n needs `solo(model, n)` seconds of work, times a
  mean-one log-normal noise factor exp(sigma * z - sigma^2 / 2); sigma = noise_sigma +
  noise_per_corunner * (the number of batches already running when it is submitted), so
  co-location can widen the spread. z is a standard normal fixed by the device's seed
  and the batch id (`solo_work`), so an oracle can know a batch's work before it is
  submitted.
- While a set R of batches runs, batch i progresses at rate 1 / s_i, where

      s_i = 1 + sum over j in R, j != i of (base + compute * c_i * c_j + memory * m_i * m_j)

  and (c, m) are the batch's compute and memory demands (e.g. the profile's
  compute_util and memory_util). A law with `pairs` (a calibrated device) replaces that
  term, for the (model, co-runner model) pairs it names, by the pair's own slowdown.
  With `cores` set (a CPU: one thread per batch), every rate is further divided by
  max(1, |R| / cores): more batches than cores time-share them.
  Rates change only when a batch starts or ends, so ends are computed exactly, event by
  event (processor sharing with per-resource contention).
- With probability `failure_rate` a batch fails at its end (error set, no outputs), so
  drivers' failure paths can be exercised.
- The host's hand-offs (a real runtime's, calibrated; all zero by default): a batch
  submitted at t holds its slot at once but starts at t + `dispatch_s` (its noise is
  drawn beside the batches already on the device then, started or not), and its end
  reaches the driver's callback at end + `completion_s` (the slot is free, and the batch
  gone from its co-runners' lives, from its end). `arrival_s` is read by the simulation
  driver: a request reaches the scheduler that long after its arrival. A law with
  measured hand-offs (`dispatch_table`, `completion_table`) draws each batch's two
  delays from them instead, fixed by the seed and the batch id as its noise is.
- The host's own CPU (a CPU runtime's; zero by default): `host_cpu_s` per batch, half
  at its start and half at its end (deciding it, and handling its result). Each half
  is taken from the running batches if they then hold all `host_cores` cores,
  host_cpu_s / 2 / host_cores seconds of each one's time at its current rate; it
  runs on a free core otherwise (an end frees one, unless more batches than cores run).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from predlat.devices.base import (
    BatchJob,
    BatchResult,
    DeviceInfo,
    DoneCallback,
    SlotBusyError,
    host_cores,
)
from predlat.devices.sim_law import (
    HANDOFFS,
    CostFn,
    InterferenceLaw,
    QuantileTable,
    seeded_normal,
    seeded_uniform,
)
from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec

# Keys of a batch's hand-off draws (batch id + this), apart from its noise's (batch id).
_DISPATCH, _DONE = 1 << 40, 2 << 40


class VirtualClock:
    """Time as the simulation says it is; shared by every device of one simulation."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start


@dataclass(slots=True)
class _Job:
    job: BatchJob
    on_done: DoneCallback
    start: float
    work: float  # solo seconds still to do
    demand: tuple[float, float]
    fails: bool
    rate: float = 1.0
    kind: int = 0  # index of its (model, batch size) in the device's pair table


class SimulatedDevice:
    """K slots on a virtual clock; see the module docstring for the law."""

    def __init__(
        self,
        cost: CostFn,
        num_slots: int = 4,
        law: InterferenceLaw | None = None,
        seed: int = 0,
        clock: VirtualClock | None = None,
        name: str = "sim",
    ) -> None:
        if num_slots < 1:
            raise ConfigError(f"slots must be at least 1, got {num_slots}")
        self.law = law or InterferenceLaw()
        self.law.validate()
        self.name = name
        self.num_slots = num_slots
        self.clock = clock or VirtualClock()
        self._cost = cost
        self._rng = random.Random(seed)  # failures
        self._seed = seed
        self._models: set[str] = set()
        self._jobs: dict[int, _Job] = {}
        self._updated = self.clock.now  # when `work` of running jobs was last brought up to date
        self.busy_time = 0.0  # slot-seconds spent running batches
        # The law's pair slowdowns, computed once per (model, batch size) pair seen:
        # _pairs[a][b] is what a running batch of kind b adds to one of kind a.
        self._kinds: dict[tuple[str, int], tuple[int, float, tuple[float, float]]] = {}
        self._kind_info: list[tuple[str, tuple[float, float]]] = []
        self._pairs: list[list[float]] = []
        self._next: tuple[float, int] | None = None  # (end, slot) of the first to end
        # Rates are brought up to date lazily (`_first_end`, `_progress`): a batch's end
        # is usually followed at the same instant by the next batch's start, and the
        # rates between the two are never read.
        self._stale = False
        # Hand-offs (law.dispatch_s, completion_s): batches holding a slot until their
        # start, and ends whose callback is still on its way (end + delay, seq, ...).
        self._queued: dict[int, _Job] = {}
        self._callbacks: list[tuple[float, int, DoneCallback, BatchResult]] = []
        self._sent = 0  # callbacks delayed so far (their heap order on equal times)

    # -- Device protocol -------------------------------------------------------------
    def load(self, spec: ModelSpec | str) -> None:
        name = spec if isinstance(spec, str) else spec.name
        self._cost(name, 1)  # raises if the cost model does not know the model
        self._models.add(name)

    def submit(self, slot: int, job: BatchJob, on_done: DoneCallback) -> None:
        if not 0 <= slot < self.num_slots:
            raise ConfigError(f"slot {slot} does not exist (device has {self.num_slots})")
        if slot in self._jobs or slot in self._queued:
            raise SlotBusyError(f"slot {slot} is busy")
        kind = self._kinds.get((job.model, job.batch_size))
        if kind is None:
            if job.model not in self._models:
                raise ConfigError(f"model '{job.model}' is not loaded on {self.name}")
            kind = self._kind(job.model, job.batch_size)
        index, solo, demand = kind
        law = self.law
        work = self._work(solo, job.batch_id, len(self._jobs) + len(self._queued))
        fails = law.failure_rate > 0 and self._rng.random() < law.failure_rate
        now = self.clock.now
        table = law.dispatch_table
        start = now + (law.dispatch_s if table is None else self._drawn(table, job, _DISPATCH))
        entry = _Job(job, on_done, start, work, demand, fails, kind=index)
        if start > now:
            self._queued[slot] = entry  # holds the slot; runs from `start` (advance)
            return
        self._progress(now)
        self._jobs[slot] = entry
        self._host_work()

    def _host_work(self) -> None:
        """A batch started or ended (the others' progress is up to date): the host's
        half of its CPU, taken from the running batches if they hold all its cores."""
        self._stale = True
        host_s, cores, jobs = self.law.host_cpu_s, self.law.host_cores, self._jobs
        if host_s > 0 and cores is not None and len(jobs) >= cores:
            self._rerate()
            lost = 0.5 * host_s / cores
            for j in jobs.values():
                j.work += j.rate * lost
            self._stale = True

    def solo_work(self, batch_id: int, model: str, batch_size: int, corunners: int) -> float:
        """Solo seconds of work of batch `batch_id` if submitted while `corunners` batches
        run, noise included: the same value whenever it is asked."""
        return self._work(self._cost(model, batch_size)[0], batch_id, corunners)

    def _work(self, solo: float, batch_id: int, corunners: int) -> float:
        table = self.law.noise_table
        if table is not None:
            u = seeded_uniform(self._seed, batch_id)
            return solo * math.exp(table.quantile(u, corunners))
        sigma = self.law.noise_sigma + self.law.noise_per_corunner * corunners
        if not sigma:
            return solo
        return solo * math.exp(sigma * seeded_normal(self._seed, batch_id) - 0.5 * sigma * sigma)

    def _drawn(self, table: QuantileTable, job: BatchJob, stream: int) -> float:
        """A hand-off delay of `job` from a measured table (`stream`: which hand-off)."""
        return max(0.0, table.quantile(seeded_uniform(self._seed, job.batch_id + stream)))

    def run_sync(self, slot: int, job: BatchJob) -> BatchResult:
        """Submit and move the virtual clock until this batch has ended (and any batch
        ending before it)."""
        box: list[BatchResult] = []
        self.submit(slot, job, box.append)
        while not box:
            self.advance(self.next_event() or self.clock.now)
        return box[0]

    def describe(self) -> DeviceInfo:
        cores = self.law.cores
        return DeviceInfo(
            kind="simulated",
            accelerator=cores is None,  # no core limit: it behaves as an accelerator
            cores=cores or host_cores(),
            threads_per_slot=1,
            num_slots=self.num_slots,
            detail=self.name,
        )

    def now(self) -> float:
        return self.clock.now

    def close(self) -> None:
        """Run every batch still on the device to its end (and make its callback)."""
        while self._jobs or self._queued or self._callbacks:
            self.advance(math.inf)

    # -- driving the virtual clock -----------------------------------------------------
    def is_busy(self, slot: int) -> bool:
        return slot in self._jobs or slot in self._queued

    def running(self) -> int:
        """Batches holding a slot: running, or submitted and not started yet."""
        return len(self._jobs) + len(self._queued)

    def remaining_work(self) -> dict[int, float]:
        """Solo seconds of work each batch on the device (by batch id, started or not)
        still has to do, noise included: the ground truth an oracle forecaster may read."""
        self._progress(self.clock.now)
        work = {j.job.batch_id: j.work for j in self._jobs.values()}
        work.update((j.job.batch_id, j.work) for j in self._queued.values())
        return work

    def next_event(self) -> float | None:
        """When the next batch ends, starts or has its end reported (None if idle)."""
        first = self._first_end()
        t = first[0] if first is not None else None
        if not (self._queued or self._callbacks):
            return t
        times = [j.start for j in self._queued.values()]
        if self._callbacks:
            times.append(self._callbacks[0][0])
        return min(times) if t is None else min(t, *times)

    def advance(self, until: float) -> int:
        """End, in time order, every batch that ends by `until`, moving the clock to each
        end before calling its callback (which may submit more work); with hand-offs, also
        start queued batches and make delayed callbacks due by then. Returns how many
        ended. The clock is not moved past the last event: the driver owns the clock."""
        ended = 0
        while True:
            if (self._queued or self._callbacks) and self._hand_off(until):
                continue
            first = self._first_end()
            if first is None:
                break
            end, slot = first
            if end > until:
                break
            if end > self.clock.now:
                self.clock.now = end
            self._progress(end)
            job = self._jobs.pop(slot)
            self._host_work()
            self.busy_time += end - job.start
            ended += 1
            result = self._result(slot, job, end)
            table = self.law.completion_table
            delay = self.law.completion_s if table is None else self._drawn(table, job.job, _DONE)
            if delay > 0:
                report = (end + delay, self._sent, job.on_done, result)
                heapq.heappush(self._callbacks, report)
                self._sent += 1
            else:
                job.on_done(result)
        return ended

    def _hand_off(self, until: float) -> bool:
        """Start the first queued batch, or make the first delayed callback, if it comes
        by `until` and before the next end (ends go first on a tie); whether one did."""
        first = self._first_end()
        t_end = first[0] if first is not None else math.inf
        slot, start = min(
            ((s, j.start) for s, j in self._queued.items()),
            key=lambda x: (x[1], x[0]),
            default=(-1, math.inf),
        )
        t_report = self._callbacks[0][0] if self._callbacks else math.inf
        t = min(start, t_report)
        if t > until or t >= t_end:
            return False
        if t > self.clock.now:
            self.clock.now = t
        if start <= t_report:
            self._progress(start)
            self._jobs[slot] = self._queued.pop(slot)
            self._host_work()
        else:
            _, _, on_done, result = heapq.heappop(self._callbacks)
            on_done(result)
        return True

    # -- the law -----------------------------------------------------------------------
    def _progress(self, t: float) -> None:
        dt = t - self._updated
        if dt > 0:
            if self._stale:  # the rates the batches ran at since the last change
                self._rerate()
            for j in self._jobs.values():
                work = j.work - j.rate * dt
                j.work = work if work > 0.0 else 0.0
            self._updated = t

    def _first_end(self) -> tuple[float, int] | None:
        """(end, slot) of the running batch that ends first, if any."""
        if self._stale:
            self._rerate()
        return self._next

    def _rerate(self) -> None:
        """Every running batch's rate, and which ends first (rates change only when the
        running set does, so the first end stays the same until it changes again)."""
        self._stale = False
        jobs = self._jobs
        if not jobs:
            self._next = None
            return
        cores = self.law.cores
        share = max(1.0, len(jobs) / cores) if cores else 1.0
        pairs = self._pairs
        running = list(jobs.values())
        first, first_slot = math.inf, -1
        for slot, j in jobs.items():
            row = pairs[j.kind]
            s = 1.0
            for other in running:
                if other is not j:
                    s += row[other.kind]
            j.rate = rate = 1.0 / (s * share)
            left = j.work / rate
            if left < first or (left == first and slot < first_slot):
                first, first_slot = left, slot
        self._next = (self._updated + first, first_slot)

    def _kind(self, model: str, batch_size: int) -> tuple[int, float, tuple[float, float]]:
        """(index in the pair table, solo latency, demand) of (model, batch size), adding
        its row and column to the table the first time it is seen: the cost model is
        asked once per kind, not per batch."""
        solo, compute, memory = self._cost(model, batch_size)
        demand = (compute, memory)
        index = len(self._kind_info)
        kind = self._kinds[(model, batch_size)] = (index, solo, demand)
        self._kind_info.append((model, demand))
        pair_of = self.law.pair_of
        for row, (m, d) in zip(self._pairs, self._kind_info, strict=False):
            row.append(pair_of(m, d, model, demand))
        self._pairs.append([pair_of(model, demand, m, d) for m, d in self._kind_info])
        return kind

    def _result(self, slot: int, job: _Job, end: float) -> BatchResult:
        b = job.job
        if job.fails:
            return BatchResult(
                b.batch_id,
                b.model,
                b.batch_size,
                slot,
                job.start,
                end,
                error="simulated engine failure",
            )
        return BatchResult(b.batch_id, b.model, b.batch_size, slot, job.start, end)


def make(
    slots: int,
    threads: int,
    variant: str | None = None,
    *,
    cost: CostFn | None = None,
    **options: object,
) -> SimulatedDevice:
    """The factory's constructor; a simulated device needs its cost model (`cost=`), and
    takes SimulatedDevice's other options (law, seed, clock, name)."""
    if cost is None:
        raise ConfigError("a simulated device needs a cost model (cost=); build it in code")
    if variant is not None or threads != 1:
        raise ConfigError("a simulated device has no variants and one thread per slot")
    return SimulatedDevice(cost, slots, **options)  # type: ignore[arg-type]


__all__ = ["HANDOFFS", "CostFn", "InterferenceLaw", "SimulatedDevice", "VirtualClock", "make"]
