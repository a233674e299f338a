"""The study's input as data: a profile, traces and (optionally) measured floors.

A study folder, as `predlat study` writes it and `predlat study --traces DIR` reads it:

    DIR/profile.json     the solo profile of every traced model (required; the profiler
                         writes it beside the study's outputs)
    DIR/traces/*.parquet predlat trace files (or DIR/*.parquet); their metadata gives each
                         trace's models, concurrency (K) and load, and, when the study
                         wrote them, its name, model set and regime
    DIR/traces.tar       or the same files packed in one archive (a dataset of a few
                         files, as `benchmarks/gpu_check.py` writes it)
    DIR/floors.json      the noise floors measured on the device (optional: without it
                         the report has no floors)

Nothing here runs a device, so a folder recorded on a GPU is evaluated on any machine.
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predlat.errors import ConfigError
from predlat.experiments.floors import FloorSummary
from predlat.experiments.study_config import machine_regime
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord
from predlat.traces.trace_file import read_trace

PROFILE_FILE = "profile.json"
FLOORS_FILE = "floors.json"
TRACES_DIR = "traces"
TRACES_ARCHIVE = "traces.tar"


@dataclass
class StudyTrace:
    """One trace and the configuration it was recorded under."""

    name: str
    set_name: str
    models: tuple[str, ...]
    concurrency: int
    load: float
    regime: str
    records: list[BatchRecord]
    dropped: int = 0
    foreign_cpu_frac: float | None = None  # CPU share other processes used meanwhile
    cpu_samples: list = field(default_factory=list)  # [(end of period s, that share)]
    reused: bool = False

    def differs_only_in(self, other: StudyTrace, factor: str) -> bool:
        """Same configuration but for `factor` (set, load or k), which differs."""
        mine = {"set": self.models, "load": self.load, "k": self.concurrency}
        theirs = {"set": other.models, "load": other.load, "k": other.concurrency}
        return mine[factor] != theirs[factor] and all(
            mine[f] == theirs[f] for f in mine if f != factor
        )

    def study_metadata(self) -> dict[str, Any]:
        """What the study adds to a trace file's metadata."""
        return {"study_name": self.name, "model_set": self.set_name, "regime": self.regime}


@dataclass
class StudyData:
    profile: Profile
    traces: list[StudyTrace]
    noise_floor: FloorSummary | None = None
    colocation_floor: FloorSummary | None = None  # per K
    source: str = "measured"  # or the folder the traces were read from


def trace_from_file(path: Path, profile: Profile) -> StudyTrace:
    trace = read_trace(path)
    meta = trace.metadata
    try:
        models = tuple(meta["models"])
        k = int(meta["concurrency"])
        load = float(meta["load"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"trace {path} lacks the metadata a study needs (models, concurrency, load)"
        ) from None
    missing = sorted({r.model for r in trace.records} - set(profile.models))
    if missing:
        raise ConfigError(f"trace {path} has models the profile lacks: {', '.join(missing)}")
    return StudyTrace(
        name=str(meta.get("study_name") or path.stem),
        set_name=str(meta.get("model_set") or "+".join(models)),
        models=models,
        concurrency=k,
        load=load,
        regime=str(meta.get("regime") or machine_regime(profile.machine, k)),
        records=trace.records,
        dropped=int(meta.get("dropped", 0)),
        foreign_cpu_frac=meta.get("foreign_cpu_frac"),
        cpu_samples=list(meta.get("foreign_cpu_samples", [])),
        reused=True,
    )


def load_study_dir(folder: Path) -> StudyData:
    """Read a study folder (see the module docstring); bad input is a ConfigError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--traces {folder} is not a folder")
    profile_path = folder / PROFILE_FILE
    if not profile_path.is_file():
        raise ConfigError(
            f"{folder} has no {PROFILE_FILE}: the solo profile must come with the traces"
        )
    profile = Profile.load(profile_path)
    with tempfile.TemporaryDirectory(prefix="predlat-traces-") as unpacked:
        paths = sorted((folder / TRACES_DIR).glob("*.parquet")) + sorted(folder.glob("*.parquet"))
        paths += unpack_traces(folder / TRACES_ARCHIVE, Path(unpacked))
        if not paths:
            raise ConfigError(
                f"{folder} holds no trace files (*.parquet, traces/*.parquet or {TRACES_ARCHIVE})"
            )
        traces = [trace_from_file(p, profile) for p in paths]
    names = [t.name for t in traces]
    if len(set(names)) != len(names):
        raise ConfigError(f"{folder} holds two traces of the same name")
    noise, colocation = read_floors(folder / FLOORS_FILE)
    return StudyData(profile, traces, noise, colocation, source=str(folder))


def unpack_traces(archive: Path, into: Path) -> list[Path]:
    """The Parquet files of a traces archive, extracted under `into` (none if absent)."""
    if not archive.is_file():
        return []
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".parquet")]
            tar.extractall(into, members=members, filter="data")  # no paths outside `into`
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"cannot read {archive}: {exc}") from None
    return sorted(into.rglob("*.parquet"))


def pack_traces(paths: list[Path], archive: Path) -> Path:
    """Pack trace files flat into one archive (the inverse of `unpack_traces`)."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(paths):
            tar.add(path, arcname=path.name)
    return archive


def write_floors(path: Path, noise: FloorSummary | None, colocation: FloorSummary | None) -> None:
    data = {
        "noise_floor": None if noise is None else noise.to_json("per_model"),
        "colocation_floor": None if colocation is None else colocation.to_json("per_k"),
    }
    Path(path).write_text(json.dumps(to_jsonable(data), indent=2) + "\n")


def read_floors(path: Path) -> tuple[FloorSummary | None, FloorSummary | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected an object with noise_floor and colocation_floor")
        noise, colocation = data.get("noise_floor"), data.get("colocation_floor")
        return (
            None if noise is None else FloorSummary.from_json(noise, "per_model"),
            None if colocation is None else FloorSummary.from_json(colocation, "per_k"),
        )
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def to_jsonable(value: Any) -> Any:
    """NaN and infinities become null: JSON files stay valid for any reader."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
