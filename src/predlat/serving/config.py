"""What the server needs of a runtime, and its settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from predlat.scheduling.request import Priority
from predlat.serving.admission import DoorPolicy, Refusal
from predlat.serving.decode import DEFAULT_OFFLOAD_BYTES
from predlat.serving.repository import ModelSettings
from predlat.traces.records import BatchRecord

DEFAULT_MAX_BODY_BYTES = 64 * 2**20


class RuntimeLike(Protocol):
    """What the server needs of a Runtime (predlat.runtime.runtime.Runtime)."""

    def submit(
        self,
        model: str,
        inputs: dict[str, np.ndarray] | None,
        *,
        deadline_s: float,
        priority: Priority = Priority.LOW,
        waited_s: float = 0.0,
    ) -> Future: ...

    def add_listener(self, on_outcome: Callable[[Any], None]) -> None: ...

    def add_batch_listener(self, on_batch: Callable[[BatchRecord, float], None]) -> None: ...


class HostableRuntime(RuntimeLike, Protocol):
    """A runtime the app can start on its event loop and stop when serving ends."""

    @property
    def started(self) -> bool: ...

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None: ...

    async def stop_async(self, drain: bool = True, timeout: float = 30.0) -> None: ...


@dataclass
class ServerConfig:
    """Per-server settings. `default_deadline_s` maps model -> seconds (used when a request
    names no deadline); models missing from it use `fallback_deadline_s`.
    `drain_timeout_s`: at shutdown, how long a runtime the app started may take to finish
    its queued and running work."""

    default_deadline_s: Mapping[str, float] = field(default_factory=dict)
    fallback_deadline_s: float = 0.1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout_s: float = 30.0
    door: DoorPolicy = field(default_factory=DoorPolicy)
    # Worker processes decoding big JSON bodies (0: a thread) and the size that sends
    # a body there.
    decode_processes: int = 0
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES
    # Nice steps for the compute threads (the runtime's slots, the decode workers), so
    # the event loop runs as soon as it wakes (predlat.devices.priority); 0: unchanged.
    compute_nice: int = 0
    # Per-model settings (a Triton model repository's config.pbtxt files).
    models: dict[str, ModelSettings] = field(default_factory=dict)
    repository: Path | None = None  # the model repository they came from
    versions: dict[str, str] = field(default_factory=dict)  # model -> version served

    def settings(self, model: str) -> ModelSettings:
        return self.models.get(model, _DEFAULTS)

    def deadline_for(self, model: str) -> float:
        """A request's deadline when it names none: the model's default timeout, else
        the server's default for the model."""
        timeout = self.settings(model).default_timeout_s
        if timeout:
            return timeout
        return self.default_deadline_s.get(model, self.fallback_deadline_s)

    def action_for(self, model: str, requested: str | None) -> str:
        """REJECT or DELAY: the request's choice where the model allows overrides."""
        settings = self.models.get(model)
        if settings is None:
            return self.door.action_for(model, requested)
        if requested is not None and settings.allow_timeout_override:
            return requested
        return settings.timeout_action

    def request_deadline(self, model: str, requested: float | None) -> float:
        if requested is None or not self.settings(model).allow_timeout_override:
            return self.deadline_for(model)
        return requested

    def limit_refusal(self, model: str, rows: int, level: int) -> Refusal | None:
        """The model's max_batch_size and priority_levels (a repository's config)."""
        settings = self.settings(model)
        if settings.max_batch_size and rows > settings.max_batch_size:
            return Refusal(
                400,
                "bad_request",
                f"model '{model}': batch of {rows} rows is over its max_batch_size "
                f"{settings.max_batch_size}",
            )
        levels = settings.priority_levels
        if levels and level > levels:
            return Refusal(
                400,
                "bad_request",
                f"model '{model}': priority {level} is over its priority_levels ({levels})",
            )
        return None


_DEFAULTS = ModelSettings()


@dataclass
class ServingState:
    """Whether the server takes new work; flipped when shutdown begins."""

    ready: bool = False
    accepting: bool = True
