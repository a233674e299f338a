"""The Device protocol: K execution slots that each run one batch at a time.

Workers only execute (the Clockwork split): a device never decides what to run; it is
told which batch to run on which slot and reports when it started and ended.
"""

from __future__ import annotations

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


@runtime_checkable
class Device(Protocol):
    """An accelerator (or a CPU) with `num_slots` execution slots."""

    name: str
    num_slots: int

    def load(self, spec: ModelSpec) -> None:
        """Make a model runnable on every slot (idempotent)."""

    def submit(self, slot: int, job: BatchJob, on_done: DoneCallback) -> None:
        """Start `job` on a free `slot`; `on_done` is called once, from any thread."""

    def now(self) -> float:
        """The device's clock, in seconds (monotonic)."""

    def close(self) -> None:
        """Finish running batches and release resources."""


class SlotBusyError(RuntimeError):
    """A batch was submitted to a slot that is still running another one."""
