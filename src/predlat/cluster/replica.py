"""One predlat runtime (scheduler, predictor, device) behind one Serve replica.

Plain Python: `deployment.py` wraps it for Ray Serve. A request arrives with its Route
(model, rows, priority, wall-clock deadline); the runtime schedules it on this replica's
device by the deadline left, and the answer is the runtime's RequestOutcome. A request
the router refused is answered 'rejected' with the router's reason without running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np

from predlat.cluster.messages import Route
from predlat.cluster.state import ReplicaState
from predlat.runtime import Runtime, build_runtime
from predlat.runtime.build import warm_up
from predlat.scheduling.outcome import RequestOutcome

STOP_TIMEOUT_S = 10.0  # how long a closing replica waits for its running batches


@dataclass(frozen=True)
class ReplicaConfig:
    """How each replica builds its runtime (the options of `predlat serve`)."""

    models: tuple[str, ...]
    slots: int = 1
    policy: str = "predlat"
    threads: int = 1
    device: str = "onnxruntime"  # a make_device name
    max_queue: int = 1000
    max_batch: int = 8


class PredlatReplica:
    def __init__(self, config: ReplicaConfig, name: str = "replica") -> None:
        self.config = config
        self.runtime: Runtime
        self.runtime, profile = build_runtime(
            list(config.models),
            slots=config.slots,
            policy=config.policy,
            threads=config.threads,
            device=config.device,
            max_queue=config.max_queue,
            max_batch=config.max_batch,
            progress=False,
        )
        # As `predlat serve`: the first run of each shape is slow, so it happens now.
        warm_up(self.runtime.device, self.runtime.models, config.max_batch)
        self.state = ReplicaState.of(
            name, profile, self.runtime.models, config.slots, config.max_batch
        )
        self.runtime.add_batch_listener(self.state.on_batch)

    async def infer(self, route: Route, inputs: dict[str, np.ndarray] | None) -> RequestOutcome:
        if route.refusal is not None:
            return route.unrun("rejected", route.refusal)
        remaining = route.remaining_s()
        if remaining <= 0:
            return route.unrun("rejected", "deadline passed before the request reached a replica")
        if not self.runtime.started:  # host the controller on the loop requests arrive on
            self.runtime.start(asyncio.get_running_loop())
        self.state.arrived(route.model, route.priority, route.rows)
        try:
            future = self.runtime.submit(
                route.model, inputs, deadline_s=remaining, priority=route.priority
            )
            # Shielded: a caller that gives up must not cancel the runtime's future, which
            # the runtime resolves exactly once whoever still listens.
            return await asyncio.shield(asyncio.wrap_future(future))
        finally:
            self.state.answered(route.model, route.priority, route.rows)

    def routing_stats(self) -> dict:
        return self.state.publish(self.runtime.scheduler.running(), self.runtime.now())

    def close(self) -> Awaitable[None] | None:
        """Stop the runtime, finishing its queued and running work. On the event loop
        that hosts it (where Serve calls a replica's destructor) the stop must be awaited
        there: the awaitable is returned (Serve awaits what `__del__` returns); anywhere
        else it stops now and returns None."""
        if not self.runtime.started:
            return None
        if self.runtime.hosted_here():
            return self.runtime.stop_async(drain=True, timeout=STOP_TIMEOUT_S)
        self.runtime.stop(drain=True, timeout=STOP_TIMEOUT_S)
        return None


__all__ = ["PredlatReplica", "ReplicaConfig"]
