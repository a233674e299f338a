"""The Device protocol: K execution slots that each run one batch at a time.

Workers only execute (the Clockwork split): a device never decides what to run; it is
told which batch to run on which slot and reports when it started and ended.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from predlat.models.spec import ModelSpec


@dataclass
class BatchJob:
    """One batch to execute. `inputs=None` lets the device feed cached random inputs
    (profiling and trace collection measure time, not answers)."""

    batch_id: int
    model: str
    batch_size: int
    inputs: dict[str, np.ndarray] | None = None


@dataclass
class BatchResult:
    """A finished batch. Times are seconds on the device's monotonic clock (`Device.now`),
    measured immediately around the engine call."""

    batch_id: int
    model: str
    batch_size: int
    slot: int
    start: float
    end: float
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return self.end - self.start


DoneCallback = Callable[[BatchResult], None]

# `BatchResult.extra` keys of a batch's phases, in seconds, where a device measures them:
# copy in (host to device), compute, copy out. They sum to at most the latency.
PHASES = ("copy_in_s", "compute_s", "copy_out_s")

SPATIAL = "spatial"
OVERSUBSCRIBED = "oversubscribed"
ACCELERATOR = "accelerator"


@dataclass(frozen=True)
class DeviceInfo:
    """What a device is, as everything above the devices sees it (nothing else matches
    provider or backend strings). `cores` are the host's usable CPU cores; `detail` is
    free text naming what computes (an ONNX Runtime provider, a CUDA device's name)."""

    kind: str  # "onnxruntime", "torch", "simulated", ...
    accelerator: bool  # computes on an accelerator: the OS does not time-slice it
    cores: int
    threads_per_slot: int
    num_slots: int
    detail: str = ""

    @property
    def regime(self) -> str:
        """ "accelerator"; on a CPU "spatial" when slots x threads fit the cores (batches
        share caches and memory bandwidth), else "oversubscribed" (the OS time-slices)."""
        return regime(self.accelerator, self.num_slots, self.threads_per_slot, self.cores)


def regime(accelerator: bool, slots: int, threads: int, cores: int) -> str:
    if accelerator:
        return ACCELERATOR
    return SPATIAL if slots * threads <= cores else OVERSUBSCRIBED


@runtime_checkable
class Device(Protocol):
    """An accelerator (or a CPU) with `num_slots` execution slots."""

    name: str
    num_slots: int

    def load(self, spec: ModelSpec) -> None:
        """Make a model runnable on every slot (idempotent)."""

    def submit(self, slot: int, job: BatchJob, on_done: DoneCallback) -> None:
        """Start `job` on a free `slot`; `on_done` is called once, from any thread."""

    def run_sync(self, slot: int, job: BatchJob) -> BatchResult:
        """Run one batch on a free `slot` and return when it has ended (profiling)."""

    def describe(self) -> DeviceInfo:
        """What this device is: kind, accelerator or not, cores, threads per slot."""

    def now(self) -> float:
        """The device's clock, in seconds (monotonic)."""

    def close(self) -> None:
        """Finish running batches and release resources."""


def wait_for(device: Device, slot: int, job: BatchJob) -> BatchResult:
    """`run_sync` for a device whose workers call back from their own threads: submit and
    block until the callback has fired."""
    done = threading.Event()
    box: list[BatchResult] = []

    def on_done(result: BatchResult) -> None:
        box.append(result)
        done.set()

    device.submit(slot, job, on_done)
    done.wait()
    return box[0]


def error_message(exc: BaseException) -> str:
    """The first line of an engine's exception, for BatchResult.error and load errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def host_cores() -> int:
    """The machine's CPU cores, as profiles have always recorded them."""
    return os.cpu_count() or 1


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / cgroup CPU pinning
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SlotBusyError(RuntimeError):
    """A batch was submitted to a slot that is still running another one."""
