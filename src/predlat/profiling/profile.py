"""The solo profile: what each (model, batch size) costs alone, and its resource features.

Times are kept in seconds in memory; `profile.json` stores milliseconds for people.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predlat.errors import PredlatError

# Resource features every profile entry carries (computed in profiling/profiler.py).
#   flops, bytes           - from the ONNX graph with shape inference, per batch
#                            (bytes: a no-cache upper bound, see profiling/graph_cost.py)
#   gflops_per_s, gbytes_per_s - achieved when running alone (flops or bytes / median latency)
#   compute_util, memory_util  - achieved / the machine's measured per-slot peak, 0..~1
#                            (memory_util can exceed 1 when a model's data stays in cache)
#   arith_intensity        - flops / bytes
FEATURE_NAMES: tuple[str, ...] = (
    "flops",
    "bytes",
    "gflops_per_s",
    "gbytes_per_s",
    "compute_util",
    "memory_util",
    "arith_intensity",
)


@dataclass
class LatencyStats:
    median: float  # seconds
    p99: float
    cv: float  # standard deviation / mean
    samples: int = 0


@dataclass
class BatchProfile:
    latency: LatencyStats
    features: dict[str, float]


@dataclass
class MachineInfo:
    provider: str  # what computes, as the device describes it (DeviceInfo.detail)
    cores: int
    intra_op_threads: int
    cpu: str
    peaks: dict[str, float]  # e.g. {"gemm_gflops_per_s": .., "mem_gbytes_per_s": ..}
    accelerator: bool = False  # an accelerator computes (files from before it: CPUs)


@dataclass
class Profile:
    machine: MachineInfo
    models: dict[str, dict[int, BatchProfile]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # model name -> file sha256

    # -- look-ups used by predictors and schedulers ----------------------------------
    def batch_sizes(self, model: str) -> list[int]:
        return sorted(self._entries(model))

    def solo_latency(self, model: str, batch_size: int) -> float:
        """Median solo latency in seconds; linear interpolation between profiled sizes
        (and extrapolation from the two nearest) for sizes that were not measured."""
        entries = self._entries(model)
        if batch_size in entries:
            return entries[batch_size].latency.median
        sizes = sorted(entries)
        values = [entries[s].latency.median for s in sizes]
        if len(sizes) == 1:
            return values[0] * batch_size / sizes[0]
        value = float(_interp_extrap(batch_size, sizes, values))
        # Noise can make the measured latency fall with batch size, and extrapolating
        # that reaches zero; a batch never costs nothing (schedulers divide by it).
        return value if value > 0 else values[0 if batch_size < sizes[0] else -1]

    def features(self, model: str, batch_size: int) -> dict[str, float]:
        """Resource features; interpolated like `solo_latency` for unmeasured sizes."""
        entries = self._entries(model)
        if batch_size in entries:
            return entries[batch_size].features
        sizes = sorted(entries)
        if len(sizes) == 1:  # nothing to interpolate: utilisations stay as measured
            return entries[sizes[0]].features
        return {
            name: float(
                _interp_extrap(batch_size, sizes, [entries[s].features[name] for s in sizes])
            )
            for name in FEATURE_NAMES
        }

    def _entries(self, model: str) -> dict[int, BatchProfile]:
        if model not in self.models:
            raise PredlatError(
                f"model '{model}' is not in the profile (profiled: "
                f"{', '.join(self.models) or 'none'})"
            )
        return self.models[model]

    # -- files -----------------------------------------------------------------------
    def to_json(self) -> dict:
        models = {}
        for name, entries in self.models.items():
            models[name] = {
                str(n): {
                    "latency_ms": {
                        "median": e.latency.median * 1e3,
                        "p99": e.latency.p99 * 1e3,
                        "cv": e.latency.cv,
                        "samples": e.latency.samples,
                    },
                    "features": dict(e.features),
                }
                for n, e in sorted(entries.items())
            }
        return {"machine": asdict(self.machine), "models": models, "digests": dict(self.digests)}

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        machine = MachineInfo(**data["machine"])
        models: dict[str, dict[int, BatchProfile]] = {}
        for name, entries in data["models"].items():
            models[name] = {}
            for n, e in entries.items():
                lat = e["latency_ms"]
                stats = LatencyStats(
                    lat["median"] / 1e3, lat["p99"] / 1e3, lat["cv"], lat.get("samples", 0)
                )
                models[name][int(n)] = BatchProfile(stats, dict(e["features"]))
        return cls(machine=machine, models=models, digests=dict(data.get("digests", {})))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name in the same folder, then an atomic rename: concurrent
        # writers never interleave and readers never see half a file.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.to_json(), indent=2))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise PredlatError(f"cannot read profile {path}: {exc}") from None
        problem = profile_json_problem(data)
        if problem is not None:
            raise PredlatError(f"profile {path}: {problem}")
        try:
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise PredlatError(f"cannot read profile {path}: {exc}") from None


def profile_json_problem(data: Any) -> str | None:
    """What is wrong with a profile.json's content, naming the field; None if nothing."""
    if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
        return "expected an object with 'machine' and 'models' objects"
    models = data.get("models")
    if not isinstance(models, dict):
        return "models: expected an object of {model: {batch size: entry}}"
    for name, entries in models.items():
        if not isinstance(entries, dict) or not entries:
            return f"models.{name}: expected an object with at least one batch size"
        for n, entry in entries.items():
            problem = _entry_problem(n, entry)
            if problem is not None:
                return f"models.{name}.{problem}"
    return None


def _entry_problem(size: str, entry: Any) -> str | None:
    if not size.isdigit() or int(size) < 1:
        return f"{size}: batch size must be an integer >= 1"
    latency = entry.get("latency_ms") if isinstance(entry, dict) else None
    features = entry.get("features") if isinstance(entry, dict) else None
    if not isinstance(latency, dict) or not isinstance(features, dict):
        return f"{size}: expected an object with 'latency_ms' and 'features' objects"
    for key, positive in (("median", True), ("p99", False), ("cv", False)):
        value = latency.get(key)
        ok = _is_number(value) and math.isfinite(value) and (value > 0 or not positive)
        if not ok or value < 0:
            which = "positive" if positive else "non-negative"
            return f"{size}.latency_ms.{key}: expected a {which} finite number, got {value!r}"
    for key in FEATURE_NAMES:
        if not _is_number(features.get(key)):
            return f"{size}.features.{key}: expected a number, got {features.get(key)!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interp_extrap(x: float, xs: list[int], ys: list[float]) -> float:
    if xs[0] <= x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    # Outside the measured range: extend the nearest segment linearly, never below zero.
    i, j = (0, 1) if x < xs[0] else (-2, -1)
    slope = (ys[j] - ys[i]) / (xs[j] - xs[i])
    return max(0.0, ys[i] + slope * (x - xs[i]))
