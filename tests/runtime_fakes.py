"""A gated fake device for exact runtime checks: each batch runs on its own thread once
`gate` opens; outputs = 2 * input `x`; an input holding a NaN fails like an engine error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from predlat.devices.base import BatchJob, BatchResult
from predlat.runtime import Runtime
from predlat.scheduling import FixedSlowdownForecaster, Scheduler, SchedulerConfig, get_policy
from predlat.sim import SyntheticModel, synthetic_profile

PROFILE = synthetic_profile({"a": SyntheticModel(0.002, 0.0005), "b": SyntheticModel(0.004, 0.001)})


class GatedDevice:
    """Runs each batch on its own thread after `gate` opens; outputs = 2 * input `x`.
    A batch whose input holds a NaN fails, like an engine error."""

    name = "gated"

    def __init__(self, num_slots: int = 1, latency: float = 0.002) -> None:
        self.num_slots = num_slots
        self.latency = latency
        self.gate = threading.Event()
        self.gate.set()
        self.jobs: list[BatchJob] = []
        self.closed = False

    def load(self, spec: object) -> None:
        pass

    def submit(self, slot: int, job: BatchJob, on_done: Callable[[BatchResult], None]) -> None:
        self.jobs.append(job)
        threading.Thread(target=self._run, args=(slot, job, on_done), daemon=True).start()

    def _run(self, slot: int, job: BatchJob, on_done: Callable[[BatchResult], None]) -> None:
        self.gate.wait()
        start = self.now()
        time.sleep(self.latency)
        x = None if job.inputs is None else job.inputs["x"]
        if x is not None and np.isnan(x).any():
            on_done(
                BatchResult(
                    job.batch_id,
                    job.model,
                    job.batch_size,
                    slot,
                    start,
                    self.now(),
                    error="bad value in input",
                )
            )
            return
        outputs = None if x is None else {"y": 2 * x, "scale": np.float32(2.0)}
        on_done(
            BatchResult(
                job.batch_id, job.model, job.batch_size, slot, start, self.now(), outputs=outputs
            )
        )

    def now(self) -> float:
        return time.perf_counter()

    def close(self) -> None:
        self.closed = True


def gated_runtime(
    slots: int = 1, policy: str = "predlat", start: bool = True, **config: float
) -> tuple[Runtime, GatedDevice]:
    """A runtime over a GatedDevice with models `a` and `b`; started on a control thread
    unless `start` is False."""
    device = GatedDevice(slots)
    fc = FixedSlowdownForecaster(PROFILE.solo_latency)
    sched = Scheduler(["a", "b"], slots, fc, PROFILE, get_policy(policy), SchedulerConfig(**config))  # type: ignore[arg-type]
    runtime = Runtime(device, sched, PROFILE)
    if start:
        runtime.start()
    return runtime, device


def x(rows: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 3), value, np.float32)}
