"""The Ray Serve deployment: one PredlatReplica per replica, routed by PredlatRouter
(or, for comparison, by Serve's default power-of-two-choices router)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from predlat.cluster.messages import Route
from predlat.cluster.replica import PredlatReplica, ReplicaConfig
from predlat.cluster.router import PredlatRouter
from predlat.errors import ConfigError
from predlat.scheduling.outcome import RequestOutcome

ROUTERS = ("predlat", "default")
APP_NAME = "predlat"


@serve.deployment(
    max_ongoing_requests=10_000,  # predlat's scheduler queues and refuses, not Serve
    health_check_period_s=1.0,
    graceful_shutdown_timeout_s=5.0,
    logging_config={"enable_access_log": False},  # a log line per request costs more
)
class PredlatDeployment:
    def __init__(self, config: ReplicaConfig) -> None:
        name = serve.get_replica_context().replica_id.unique_id
        self.replica = PredlatReplica(config, name)

    async def infer(self, route: Route, inputs: dict[str, np.ndarray] | None) -> RequestOutcome:
        return await self.replica.infer(route, inputs)

    def record_routing_stats(self) -> dict:
        return self.replica.routing_stats()

    def pid(self) -> int:  # lets the fault test find the actor to kill
        import os

        return os.getpid()

    def __del__(self) -> Awaitable[None] | None:
        # Serve calls this on the replica's event loop, which hosts the runtime: the
        # runtime's stop is then returned for Serve to await (a blocking stop there
        # would wait on the loop it blocks). Called again by the collector, it finds
        # the runtime stopped and returns None.
        replica = getattr(self, "replica", None)
        return replica.close() if replica is not None else None


@dataclass(frozen=True)
class ClusterConfig:
    replicas: int = 2
    router: str = "predlat"
    stats_period_s: float = 0.05  # how often replicas publish routing stats
    cpus_per_replica: float = 1.0  # a CPU slice per replica
    gpus_per_replica: float = 0.0  # 1 on a GPU machine: a replica per device
    # A process keeps the first router it built for an app's deployment, even across
    # redeployments with another router class: compare routers under distinct names.
    app_name: str = APP_NAME

    def validate(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {self.replicas}")
        if self.router not in ROUTERS:
            raise ConfigError(f"unknown router '{self.router}' (choose {', '.join(ROUTERS)})")
        if not self.stats_period_s > 0:
            raise ConfigError(f"stats period must be positive, got {self.stats_period_s}")


def deploy(replica: ReplicaConfig, cluster: ClusterConfig) -> DeploymentHandle:
    """Start the deployment on the Ray instance this process joined (ray.init) and
    return its handle; its router runs in this process."""
    cluster.validate()
    router_class = PredlatRouter if cluster.router == "predlat" else None
    router_config = RequestRouterConfig(
        request_routing_stats_period_s=cluster.stats_period_s,
        request_routing_stats_timeout_s=max(1.0, 10 * cluster.stats_period_s),
        initial_backoff_s=0.001,
        max_backoff_s=0.02,
        **({"request_router_class": router_class} if router_class else {}),
    )
    app = PredlatDeployment.options(
        num_replicas=cluster.replicas,
        request_router_config=router_config,
        ray_actor_options={
            "num_cpus": cluster.cpus_per_replica,
            "num_gpus": cluster.gpus_per_replica,
            # Requests run on the replica's own event loop, which also hosts the predlat
            # runtime: one thread hop less per request each way than Serve's default.
            "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
        },
    ).bind(replica)
    return serve.run(app, name=cluster.app_name, route_prefix=None)


__all__ = ["ROUTERS", "ClusterConfig", "PredlatDeployment", "deploy"]
