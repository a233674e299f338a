"""A round-robin cluster simulated in shards: contiguous blocks of its devices, each
simulated on its own (in worker processes, `predlat.experiments.parallel`), then merged.

Why this is exact: under round-robin, request n goes to device n mod N whatever the
devices' states, and the devices share nothing but the clock, which every event sets to
its own time. So a block of devices sees the same requests at the same times as it does
in the whole cluster. A shard reads the whole request stream, keeps the requests whose
n mod N falls in its block [a, b), and its own round-robin over its b - a devices sends
each to the device the whole cluster would (the k-th kept request is n = qN + r with
k = q(b - a) + r - a). Merged, the shards' metrics equal the unsharded run's to the last
bit (`StreamStats` adds its float sums up per device, in device order).

The other routes read every device's state at each arrival, so they cannot be split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from predlat.errors import ConfigError
from predlat.scheduling.request import Request
from predlat.sim.cluster import ClusterSimulation
from predlat.sim.metrics import StreamStats

SHARDABLE_ROUTES = ("round-robin",)


def blocks(devices: int, shards: int) -> list[range]:
    """`shards` contiguous blocks of device indices, sizes differing by at most one
    (fewer blocks when there are fewer devices)."""
    if devices < 1 or shards < 1:
        raise ConfigError(f"need at least one device and one shard, got {devices}, {shards}")
    shards = min(shards, devices)
    cuts = [devices * i // shards for i in range(shards + 1)]
    return [range(a, b) for a, b in pairwise(cuts)]


def in_block(requests: Iterable[Request], devices: int, block: range) -> Iterator[Request]:
    """The requests that round-robin over `devices` sends into `block`, in order."""
    if block == range(devices):
        yield from requests
        return
    a, b = block.start, block.stop
    for n, r in enumerate(requests):
        if a <= n % devices < b:
            yield r


@dataclass
class ShardRun:
    """One block's part of a run; `merge` joins a run's parts."""

    block: range
    stats: StreamStats
    busy_s: list[float]  # slot-seconds busy per device, in device order
    slots: int
    wall_s: float  # this part's own wall time

    @property
    def busy_slot_s(self) -> float:
        return sum(self.busy_s)

    def summary(self) -> dict[str, float]:
        return self.stats.summary(self.busy_slot_s, self.slots)


def run_block(
    build: Callable[[range], ClusterSimulation],
    requests: Iterable[Request],
    devices: int,
    block: range,
    keep: bool = False,
) -> ShardRun:
    """Build `block`'s devices with `build(block)` and simulate its share of `requests`
    (the whole run's stream, in arrival order)."""
    wall = time.perf_counter()
    sim = build(block)
    if len(block) < devices and sim.route not in SHARDABLE_ROUTES:
        raise ConfigError(f"route '{sim.route}' reads every device: it cannot be sharded")
    stats, _ = sim.run_stream(in_block(requests, devices, block), keep=keep)
    busy = [d.busy_time for d in sim.devices]
    return ShardRun(block, stats, busy, sim.slots(), time.perf_counter() - wall)


def merge(parts: Sequence[ShardRun]) -> ShardRun:
    """One run's parts joined (in block order, whatever order they finished in); its
    wall time is theirs summed, one process's worth."""
    ordered = sorted(parts, key=lambda p: p.block.start)
    if not ordered:
        raise ValueError("nothing to merge")
    for x, y in pairwise(ordered):
        if x.block.stop != y.block.start:
            raise ValueError(f"shards {x.block} and {y.block} do not tile the devices")
    stats = StreamStats(keep=ordered[0].stats.keep)
    busy: list[float] = []
    for p in ordered:
        stats.merge(p.stats)
        busy.extend(p.busy_s)
    block = range(ordered[0].block.start, ordered[-1].block.stop)
    slots = sum(p.slots for p in ordered)
    return ShardRun(block, stats, busy, slots, sum(p.wall_s for p in ordered))


__all__ = ["SHARDABLE_ROUTES", "ShardRun", "blocks", "in_block", "merge", "run_block"]
