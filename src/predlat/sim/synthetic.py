"""Synthetic profiles: simulate a model mix without measuring a machine (what-if studies,
exact tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from predlat.profiling.profile import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
)


@dataclass(frozen=True)
class SyntheticModel:
    base_s: float  # solo latency at batch size 1
    per_row_s: float  # added per extra row
    compute: float = 0.5  # compute_util feature (demand on the simulated device)
    memory: float = 0.5  # memory_util feature

    def latency(self, batch_size: int) -> float:
        return self.base_s + self.per_row_s * (batch_size - 1)


MS = 1e-3
# The CPU zoo's character on a simulated device (solo s at batch 1, s per extra row,
# compute and memory demand, as the zoo profiled on a 2-core CPU): benchmarks and tests
# that want a realistic mix without measuring a machine.
ZOO_LIKE: dict[str, SyntheticModel] = {
    "resnet": SyntheticModel(7.9 * MS, 7.7 * MS, 0.69, 0.62),
    "yolo": SyntheticModel(4.5 * MS, 4.3 * MS, 0.70, 0.55),
    "roberta": SyntheticModel(2.2 * MS, 2.0 * MS, 0.54, 0.67),
    "vit": SyntheticModel(11.1 * MS, 11.7 * MS, 0.67, 0.58),
    "vgg": SyntheticModel(10.9 * MS, 9.8 * MS, 0.86, 0.27),
    "convnext": SyntheticModel(5.0 * MS, 5.6 * MS, 0.43, 0.96),
}


def synthetic_profile(
    models: Mapping[str, SyntheticModel],
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    cv: float = 0.02,
) -> Profile:
    """A profile whose solo latencies are exactly `base + per_row * (n - 1)`."""
    entries: dict[str, dict[int, BatchProfile]] = {}
    for name, m in models.items():
        entries[name] = {}
        for n in batch_sizes:
            latency = m.latency(n)
            features = dict.fromkeys(FEATURE_NAMES, 0.0)
            features.update(
                flops=1e9 * m.compute * latency,
                bytes=1e9 * m.memory * latency,
                gflops_per_s=m.compute * 10.0,
                gbytes_per_s=m.memory * 10.0,
                compute_util=m.compute,
                memory_util=m.memory,
                arith_intensity=m.compute / max(m.memory, 1e-9),
            )
            stats = LatencyStats(latency, latency * (1 + 3 * cv), cv, 20)
            entries[name][n] = BatchProfile(stats, features)
    machine = MachineInfo(
        "Simulated", 1, 1, "synthetic", {"gemm_gflops_per_s": 10.0, "mem_gbytes_per_s": 10.0}
    )
    return Profile(machine=machine, models=entries, digests={})
