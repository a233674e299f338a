"""The per-machine profile cache: which machine a profile belongs to, where it lives, and
how measurements are merged into it (see predlat.profiling.profiler for the policy).

A measurement is cached only if it was quiet: while it ran, other processes took at most
FOREIGN_CPU_LIMIT of the CPU (see predlat.profiling.cpu_meter). Later commands reuse
cached profiles for good, so one measured under load would inflate every solo latency
(and so deadlines, capacity units and features) that follows.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from predlat.devices.base import DeviceInfo
from predlat.errors import PredlatError
from predlat.models.spec import ModelSpec
from predlat.paths import cache_dir
from predlat.profiling.cpu_meter import FOREIGN_CPU_LIMIT_ENV, CpuMeter, foreign_cpu_limit
from predlat.profiling.peaks import cpu_model_name
from predlat.profiling.profile import BatchProfile, MachineInfo, Profile

# Bump when what a cached profile means changes (cost model, measurement method):
# every cached profile then becomes stale at once.
PROFILE_FORMAT = 1
log = logging.getLogger(__name__)
# (model, batch sizes) still to measure
Todo = list[tuple[ModelSpec, list[int]]]


@dataclass(frozen=True)
class MachineId:
    """What makes two profiles comparable: the same CPU, cores, engine and threads.
    `provider` is what computes, as the device describes it (`DeviceInfo.detail`: an ONNX
    Runtime provider, so caches made before devices described themselves stay valid)."""

    cpu: str
    cores: int
    provider: str
    intra_op_threads: int
    accelerator: bool = False  # follows from `provider`, so not part of the key

    @classmethod
    def current(cls, device: DeviceInfo) -> MachineId:
        return cls(
            cpu_model_name(),
            device.cores,
            device.detail,
            device.threads_per_slot,
            device.accelerator,
        )

    @classmethod
    def of(cls, machine: MachineInfo) -> MachineId:
        return cls(
            machine.cpu,
            machine.cores,
            machine.provider,
            machine.intra_op_threads,
            machine.accelerator,
        )

    @property
    def key(self) -> str:
        """A file-name-safe key, readable and unique (a hash of every field)."""
        text = f"{self.cpu}|{self.cores}|{self.provider}|{self.intra_op_threads}|{PROFILE_FORMAT}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        cpu = re.sub(r"[^a-z0-9]+", "-", self.cpu.lower()).strip("-")[:40] or "cpu"
        engine = self.provider.removesuffix("ExecutionProvider").lower()
        engine = re.sub(r"[^a-z0-9]+", "-", engine).strip("-")[:40] or "device"
        return f"{cpu}-{self.cores}c-{engine}-t{self.intra_op_threads}-{digest}"

    def info(self, peaks: Mapping[str, float]) -> MachineInfo:
        return MachineInfo(
            self.provider,
            self.cores,
            self.intra_op_threads,
            self.cpu,
            dict(peaks),
            self.accelerator,
        )


def cache_allowed(meter: CpuMeter, path: Path) -> bool:
    """Whether what was measured since `meter` started may be cached at `path`."""
    share, limit = meter.foreign_frac(), foreign_cpu_limit()
    if share is None or share <= limit:
        return True
    log.warning(
        "other processes took %.0f%% of the CPU while profiling (limit %.0f%%, set by"
        " %s): this run uses the profile, but it is not cached in %s; profile again on"
        " a quiet machine",
        share * 100,
        limit * 100,
        FOREIGN_CPU_LIMIT_ENV,
        path.parent,
    )
    return False


def profile_cache_path(machine: MachineId) -> Path:
    return cache_dir() / "profiles" / f"{machine.key}.json"


def read_cached_profile(path: Path, machine: MachineId) -> Profile | None:
    """The cached profile at `path`, or None when absent, unreadable or for another
    machine (a cache is only ever a shortcut, never an error)."""
    if not path.is_file():
        return None
    try:
        profile = Profile.load(path)
    except PredlatError:
        return None
    if MachineId.of(profile.machine) != machine or not profile.machine.peaks:
        return None
    return profile


def stale_pairs(
    cached: Profile, specs: Sequence[ModelSpec], sizes: list[int], repeats: int, force: bool
) -> Todo:
    todo: Todo = []
    for spec in specs:
        entries = cached.models.get(spec.name, {})
        if force or cached.digests.get(spec.name) != spec.digest:
            entries = {}
        missing = [n for n in sizes if n not in entries or entries[n].latency.samples < repeats]
        if missing:
            todo.append((spec, missing))
    return todo


def merge_measured(
    target: Profile, measured: dict[str, dict[int, BatchProfile]], digests: Mapping[str, str]
) -> None:
    for name, entries in measured.items():
        keep = target.models.get(name, {}) if target.digests.get(name) == digests[name] else {}
        target.models[name] = {**keep, **entries}
        target.digests[name] = digests[name]


def store_measured(
    path: Path,
    machine: MachineId,
    profile: Profile,
    measured: dict[str, dict[int, BatchProfile]],
    digests: Mapping[str, str],
) -> None:
    # Another process may have stored other models meanwhile: merge into the newest file
    # when its peaks are the ones these measurements are relative to.
    latest = read_cached_profile(path, machine)
    if latest is not None and latest.machine.peaks == profile.machine.peaks:
        merge_measured(latest, measured, digests)
        profile = latest
    save_profile(profile, path)


def subset(profile: Profile, specs: Sequence[ModelSpec], sizes: list[int]) -> Profile:
    return Profile(
        machine=profile.machine,
        models={spec.name: {n: profile.models[spec.name][n] for n in sizes} for spec in specs},
        digests={spec.name: spec.digest for spec in specs},
    )


def rescale_utils(profile: Profile) -> None:
    """Keep utilizations relative to the profile's (new) peaks."""
    peaks = profile.machine.peaks
    for entries in profile.models.values():
        for entry in entries.values():
            f = entry.features
            f["compute_util"] = f["gflops_per_s"] / peaks["gemm_gflops_per_s"]
            f["memory_util"] = f["gbytes_per_s"] / peaks["mem_gbytes_per_s"]


def save_profile(profile: Profile, path: Path) -> None:
    try:
        profile.save(path)
    except OSError as exc:
        raise PredlatError(f"cannot write profile {path}: {exc.strerror or exc}") from None
