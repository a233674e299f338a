"""What the Ray Serve benchmarks share: a local Ray instance on loopback (importing this
module sets that up, before Ray is imported), a deployment with its front door, and
model inputs."""

# ruff: noqa: E402  (Ray must be imported after use_loopback() below)
from __future__ import annotations

import time

import numpy as np

from predlat.cluster.local import use_loopback

use_loopback()  # before Ray is imported: a local instance on 127.0.0.1
import ray  # noqa: F401  (imported here, after use_loopback, for the benchmarks)
from ray import serve

from predlat.cluster.deployment import ClusterConfig, deploy
from predlat.cluster.frontdoor import ClusterRuntime
from predlat.cluster.replica import ReplicaConfig
from predlat.models import resolve_models
from predlat.serving import protocol
from predlat.serving.loadgen import random_inputs


class Cluster:
    """A deployment on the local Ray instance and its front door. Each gets an app name
    of its own: a process keeps the router it first built for an app."""

    made = 0

    def __init__(self, models: list[str], replicas: int, router: str = "predlat") -> None:
        self.specs = {s.name: s for s in resolve_models(models)}
        replica = ReplicaConfig(tuple(models), slots=1, threads=1)
        Cluster.made += 1
        self.app = f"predlat-{Cluster.made}"
        config = ClusterConfig(replicas=replicas, router=router, app_name=self.app)
        self.handle = deploy(replica, config)
        self.runtime = ClusterRuntime(self.handle, self.specs)
        self.warm_up(replicas)

    def warm_up(self, replicas: int) -> None:
        """A few requests per model and replica (first calls pay for connections and
        lazy starts), then time for every replica to publish fresh routing stats."""
        feeds = inputs_for(list(self.specs))
        for _ in range(3):
            sent = [
                self.runtime.submit(model, x, deadline_s=5.0)
                for _ in range(replicas)
                for model, x in feeds.items()
            ]
            for future in sent:
                future.result(timeout=60)
        time.sleep(0.5)

    def close(self) -> None:
        self.runtime.close()
        serve.delete(self.app)


def inputs_for(models: list[str], seed: int = 0, rows: int = 1) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {s.name: random_inputs(protocol.model_metadata(s), rng) for s in resolve_models(models)}
    return {m: {k: np.repeat(v, rows, axis=0) for k, v in x.items()} for m, x in out.items()}
