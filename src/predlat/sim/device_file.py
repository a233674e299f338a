"""device.json: a simulated device described as data, so that one can be calibrated from
real traces (`predlat calibrate`) or written by hand for hardware predlat never saw.

Format (JSON object; `format` and `version` are required, everything else has the
default shown):

    {
      "format": "predlat-device", "version": 3,
      "name": "my-gpu",                  # shown in reports
      "slots": 4,                        # default slots per device (--slots overrides)
      "cores": null,                     # int: batches time-share this many cores
                                         #   (rates / max(1, running / cores)); null: none
      "noise": {"sigma": 0.03,           # log-normal sigma of a batch's solo work alone
                "per_corunner": 0.0,     #   + this per batch already running at its start
                "table": {               # measured noise, replacing the log-normal's draws
                  "probs": [0, 0.5, 0.99, 1],           # (version 3): log(work / solo)
                  "log_factor": [[-0.2, 0, 0.4, 0.6],   #   at each prob, one row per
                                 [-0.3, 0, 0.8, 1.1]]}}, #   batches running at the start
                                                         #   (past the last row: the last)
      "failure_rate": 0.0,               # probability a batch fails at its end
      "default_slowdown": {"base": 0.05, "compute": 0.6, "memory": 1.0},
                                         # pairs not listed below: base + compute*c_a*c_b
                                         #   + memory*m_a*m_b (c, m: the models' demands)
      "models": {                        # required, at least one
        "resnet": {"solo_s": {"1": 0.004, "8": 0.012},   # solo latency (s) per batch
                   "compute": 0.5, "memory": 0.5}        #   size; demands in [0, 1]
      },
      "pairs": {"resnet": {"bert": 0.35}}, # slowdown a running "bert" batch adds to a
                                           #   "resnet" batch (a fraction: 0.35 = +35 %)
      "handoff": {"arrival_s": 0.0,        # the serving host's hand-offs (s): arrival ->
                  "dispatch_s": 0.0,       #   scheduler, decision -> batch start, batch
                  "completion_s": 0.0,     #   end -> scheduler (version 2)
                  "dispatch_table": {      # measured (version 3): each batch's delay drawn
                    "probs": [0, 0.5, 0.99, 1],              # from these quantiles
                    "seconds": [0.0001, 0.0004, 0.004, 0.006]}} # instead of dispatch_s;
    }                                      #   "completion_table" likewise

Version 1 is version 2 without `handoff` (no hand-off delay), and version 2 is version 3
without measured tables (`noise.table`, `handoff.dispatch_table`, `completion_table`);
a device is written with the lowest version that holds it, so older readers still load
what they can simulate. Version 4 adds `handoff.host_cpu_s` and `host_cores`: the
host's own CPU per batch, taken from the batches while they hold all those cores. A
table's draw is its row's inverse CDF (linear between the
listed probabilities) at a uniform seeded by the batch: `predlat validate` measures them
on the batches a serving runtime ran (`predlat.sim.tail`, `predlat.sim.handoff`).

The law (see `predlat.devices.simulated`): while batches R run, batch i advances its solo
work at rate 1 / ((1 + sum_{j in R, j != i} pair(i, j)) * max(1, |R| / cores)). Solo
latency between listed batch sizes is interpolated linearly (extrapolated past the
largest). Every error names the offending field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predlat.devices.sim_law import QuantileTable
from predlat.devices.simulated import HANDOFFS, CostFn, InterferenceLaw
from predlat.errors import ConfigError, PredlatError
from predlat.profiling.profile import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
)
from predlat.scheduling.routing import solo_latency

DEVICE_FORMAT = "predlat-device"
DEVICE_FORMAT_VERSION = 4
VERSIONS = (1, 2, 3, 4)  # what `parse_device` reads


class DeviceFileError(PredlatError):
    """A device.json that is missing, unreadable or invalid (the message names the field)."""


@dataclass(frozen=True)
class ModelCost:
    solo_s: dict[int, float]  # batch size -> solo latency (s)
    compute: float = 0.5
    memory: float = 0.5

    def latency(self, batch_size: int) -> float:
        return solo_latency(self.solo_s, batch_size)


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    models: dict[str, ModelCost]
    law: InterferenceLaw = field(default_factory=InterferenceLaw)
    slots: int = 4

    def cost(self) -> CostFn:
        """The simulated device's cost model: (solo s, compute, memory) per (model, n)."""
        cache: dict[tuple[str, int], tuple[float, float, float]] = {}

        def cost(model: str, batch_size: int) -> tuple[float, float, float]:
            key = (model, batch_size)
            value = cache.get(key)
            if value is None:
                m = self.models.get(model)
                if m is None:
                    raise DeviceFileError(f"device '{self.name}' has no model '{model}'")
                value = cache[key] = (m.latency(batch_size), m.compute, m.memory)
            return value

        return cost

    def profile(self, cv: float | None = None) -> Profile:
        """The solo profile a scheduler on this device would have measured."""
        cv = self.law.noise_sigma if cv is None else cv
        entries: dict[str, dict[int, BatchProfile]] = {}
        for name, m in self.models.items():
            entries[name] = {}
            for n, lat in sorted(m.solo_s.items()):
                feats = dict.fromkeys(FEATURE_NAMES, 0.0)
                feats.update(compute_util=m.compute, memory_util=m.memory)
                stats = LatencyStats(lat, lat * (1 + 3 * cv), cv, 20)
                entries[name][n] = BatchProfile(stats, feats)
        cores = self.law.cores or 1
        machine = MachineInfo(self.name, cores, 1, "simulated", {}, self.law.cores is None)
        return Profile(machine=machine, models=entries, digests={})

    def to_json(self) -> dict[str, Any]:
        law = self.law
        pairs: dict[str, dict[str, float]] = {}
        for (a, b), v in sorted((law.pairs or {}).items()):
            pairs.setdefault(a, {})[b] = v
        handoff: dict[str, Any] = {k: getattr(law, k) for k in HANDOFFS}
        has_handoff = any(handoff.values())
        noise: dict[str, Any] = {"sigma": law.noise_sigma, "per_corunner": law.noise_per_corunner}
        if law.noise_table is not None:
            noise["table"] = _table_json(law.noise_table, "log_factor")
        for key in _HANDOFF_TABLES:
            if getattr(law, key) is not None:
                handoff[key] = _table_json(getattr(law, key), "seconds")
        measured = len(handoff) > len(HANDOFFS) or law.noise_table is not None
        host = law.host_cpu_s > 0
        if host:
            handoff.update(host_cpu_s=law.host_cpu_s, host_cores=law.host_cores)
        out = {
            "format": DEVICE_FORMAT,
            "version": 4 if host else 3 if measured else 2 if has_handoff else 1,
            "name": self.name,
            "slots": self.slots,
            "cores": law.cores,
            "noise": noise,
            "failure_rate": law.failure_rate,
            "default_slowdown": {"base": law.base, "compute": law.compute, "memory": law.memory},
            "models": {
                name: {
                    "solo_s": {str(n): v for n, v in sorted(m.solo_s.items())},
                    "compute": m.compute,
                    "memory": m.memory,
                }
                for name, m in self.models.items()
            },
            "pairs": pairs,
        }
        if has_handoff or measured or host:
            out["handoff"] = handoff
        return out


_HANDOFF_TABLES = ("dispatch_table", "completion_table")  # measured hand-offs (version 3)
_HOST = ("host_cpu_s", "host_cores")  # the host's own CPU (version 4)


def _table_json(table: QuantileTable, values: str) -> dict[str, Any]:
    """A table as device.json holds it: `values` a list of rows, or of seconds for a
    one-row hand-off table."""
    rows = [list(r) for r in table.rows]
    return {"probs": list(table.probs), values: rows if values == "log_factor" else rows[0]}


def save_device(spec: DeviceSpec, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return path


def load_device(source: str | Path) -> DeviceSpec:
    """A device.json path, or a preset name (`PRESETS`)."""
    if str(source) in PRESETS:
        return parse_device(PRESETS[str(source)], f"preset '{source}'")
    path = Path(source)
    if not path.exists():
        raise DeviceFileError(
            f"no device file or preset '{source}' (presets: {', '.join(sorted(PRESETS))})"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeviceFileError(f"cannot read device file {path}: {exc}") from None
    return parse_device(data, str(path))


def parse_device(data: Any, where: str = "device.json") -> DeviceSpec:
    """Validate a device.json object; errors name the field (`where: field: problem`)."""
    if not isinstance(data, dict):
        raise DeviceFileError(f"{where}: expected a JSON object")
    if data.get("format") != DEVICE_FORMAT:
        raise DeviceFileError(f"{where}: format: expected '{DEVICE_FORMAT}'")
    if data.get("version") not in VERSIONS:
        raise DeviceFileError(f"{where}: version: expected one of {', '.join(map(str, VERSIONS))}")
    if data.get("version") == 1 and "handoff" in data:
        raise DeviceFileError(f"{where}: handoff: needs version 2")
    noise = _obj(data, "noise", where)
    handoff = _obj(data, "handoff", where)
    tables = [("noise.table", "table" in noise)]
    tables += [(f"handoff.{k}", k in handoff) for k in (*_HANDOFF_TABLES, *_HOST)]
    for name, there in tables:
        need = 4 if name.split(".")[-1] in _HOST else 3
        if there and data.get("version", 0) < need:
            raise DeviceFileError(f"{where}: {name}: needs version {need}")
    slow = _obj(data, "default_slowdown", where)
    cores = _cores(data.get("cores"), f"{where}: cores")
    models = _models(data.get("models"), where)
    law = InterferenceLaw(
        base=_num(slow, "base", 0.05, f"{where}: default_slowdown.base"),
        compute=_num(slow, "compute", 0.6, f"{where}: default_slowdown.compute"),
        memory=_num(slow, "memory", 1.0, f"{where}: default_slowdown.memory"),
        noise_sigma=_num(noise, "sigma", 0.03, f"{where}: noise.sigma"),
        noise_per_corunner=_num(noise, "per_corunner", 0.0, f"{where}: noise.per_corunner"),
        failure_rate=_num(data, "failure_rate", 0.0, f"{where}: failure_rate", upper=1.0),
        cores=cores,
        pairs=_pairs(data.get("pairs", {}), models, where),
        **{k: _num(handoff, k, 0.0, f"{where}: handoff.{k}") for k in HANDOFFS},
        noise_table=_table(noise.get("table"), f"{where}: noise.table", "log_factor"),
        **{k: _table(handoff.get(k), f"{where}: handoff.{k}", "seconds") for k in _HANDOFF_TABLES},
        host_cpu_s=_num(handoff, "host_cpu_s", 0.0, f"{where}: handoff.host_cpu_s"),
        host_cores=_cores(handoff.get("host_cores"), f"{where}: handoff.host_cores"),
    )
    slots = data.get("slots", 4)
    if not isinstance(slots, int) or slots < 1:
        raise DeviceFileError(f"{where}: slots: expected an integer >= 1")
    name = data.get("name", Path(where).stem)
    if not isinstance(name, str) or not name:
        raise DeviceFileError(f"{where}: name: expected a non-empty string")
    return DeviceSpec(name, models, law, slots)


def _cores(value: Any, label: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DeviceFileError(f"{label}: expected null or an integer >= 1")
    return value


def _obj(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise DeviceFileError(f"{where}: {key}: expected an object")
    return value


def _num(data: dict, key: str, default: float, label: str, upper: float | None = None) -> float:
    value = data.get(key, default)
    if not _numbers([value]) or value < 0:  # (NaN and Infinity too: see _numbers)
        raise DeviceFileError(f"{label}: expected a non-negative number, got {value!r}")
    if upper is not None and value > upper:
        raise DeviceFileError(f"{label}: must be at most {upper}, got {value!r}")
    return float(value)


def _table(raw: Any, label: str, values: str) -> QuantileTable | None:
    """`_table_json`'s inverse: noise rows (`log_factor`) or one row of `seconds`."""
    if raw is None:
        return None
    probs = raw.get("probs") if isinstance(raw, dict) else None
    rows = raw.get(values) if isinstance(raw, dict) else None
    rows = [rows] if values == "seconds" and _numbers(rows) else rows
    if not _numbers(probs) or not isinstance(rows, list) or not all(map(_numbers, rows)):
        shape = "[[numbers]]" if values == "log_factor" else "[numbers]"
        raise DeviceFileError(f"{label}: expected {{probs: [numbers], {values}: {shape}}}")
    table = QuantileTable.of(probs, rows)
    try:
        table.validate()
    except ConfigError as exc:
        raise DeviceFileError(f"{label}: {exc}") from None
    return table


def _numbers(value: Any) -> bool:
    """Finite numbers only: JSON readers accept NaN and Infinity, which hang the simulator."""
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def _models(raw: Any, where: str) -> dict[str, ModelCost]:
    if not isinstance(raw, dict) or not raw:
        raise DeviceFileError(f"{where}: models: expected an object with at least one model")
    out: dict[str, ModelCost] = {}
    for name, m in raw.items():
        label = f"{where}: models.{name}"
        if not isinstance(m, dict):
            raise DeviceFileError(f"{label}: expected an object")
        table = m.get("solo_s")
        if not isinstance(table, dict) or not table:
            raise DeviceFileError(f"{label}.solo_s: expected {{batch size: seconds}}")
        solo: dict[int, float] = {}
        for n, _v in table.items():
            try:
                size = int(n)
            except ValueError:
                raise DeviceFileError(
                    f"{label}.solo_s: batch size '{n}' is not an integer"
                ) from None
            if size < 1:
                raise DeviceFileError(f"{label}.solo_s: batch size {size} must be >= 1")
            solo[size] = _num(table, n, 0.0, f"{label}.solo_s.{n}")
            if solo[size] <= 0:
                raise DeviceFileError(f"{label}.solo_s.{n}: must be positive")
        out[name] = ModelCost(
            solo,
            _num(m, "compute", 0.5, f"{label}.compute", upper=1.0),
            _num(m, "memory", 0.5, f"{label}.memory", upper=1.0),
        )
    return out


def _pairs(raw: Any, models: dict[str, ModelCost], where: str) -> dict[tuple[str, str], float]:
    if not isinstance(raw, dict):
        raise DeviceFileError(f"{where}: pairs: expected {{model: {{co-runner: slowdown}}}}")
    out: dict[tuple[str, str], float] = {}
    for a, row in raw.items():
        if a not in models:
            raise DeviceFileError(f"{where}: pairs.{a}: not a model of this device")
        if not isinstance(row, dict):
            raise DeviceFileError(f"{where}: pairs.{a}: expected an object")
        for b in row:
            if b not in models:
                raise DeviceFileError(f"{where}: pairs.{a}.{b}: not a model of this device")
            out[(a, b)] = _num(row, b, 0.0, f"{where}: pairs.{a}.{b}")
    return out


def _preset(name: str, cores: int | None, scale: float, pairs: dict) -> dict[str, Any]:
    models = {
        "small": {
            "solo_s": {"1": 0.002 * scale, "8": 0.006 * scale},
            "compute": 0.3,
            "memory": 0.6,
        },
        "medium": {
            "solo_s": {"1": 0.005 * scale, "8": 0.015 * scale},
            "compute": 0.6,
            "memory": 0.4,
        },
        "large": {
            "solo_s": {"1": 0.012 * scale, "8": 0.040 * scale},
            "compute": 0.8,
            "memory": 0.7,
        },
    }
    return {
        "format": DEVICE_FORMAT,
        "version": DEVICE_FORMAT_VERSION,
        "name": name,
        "slots": 4,
        "cores": cores,
        "noise": {"sigma": 0.03, "per_corunner": 0.01},
        "models": models,
        "pairs": pairs,
    }


# An accelerator whose contention follows the models' demands strongly: two memory-bound
# batches slow each other by about +125%, a compute-bound co-runner slows a memory-bound
# batch by about +35%. Who runs beside whom matters more than how many: where predictors that
# see the co-runners' demands, and the batch's own, should pay off.
CONTENDED = {
    "format": DEVICE_FORMAT,
    "version": DEVICE_FORMAT_VERSION,
    "name": "contended-gpu",
    "slots": 4,
    "cores": None,
    "noise": {"sigma": 0.03, "per_corunner": 0.01},
    "default_slowdown": {"base": 0.02, "compute": 0.3, "memory": 1.5},
    "models": {
        "membound": {"solo_s": {"1": 0.008, "8": 0.030}, "compute": 0.3, "memory": 0.9},
        "attention": {"solo_s": {"1": 0.006, "8": 0.020}, "compute": 0.6, "memory": 0.6},
        "convnet": {"solo_s": {"1": 0.005, "8": 0.016}, "compute": 0.9, "memory": 0.2},
        "tiny": {"solo_s": {"1": 0.002, "8": 0.005}, "compute": 0.2, "memory": 0.1},
    },
}

# Hand-written devices for what-if runs without traces.
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": _preset("gpu", None, 1.0, {"large": {"large": 0.6, "medium": 0.4}}),
    "cpu4": _preset("cpu4", 4, 5.0, {"small": {"small": 0.15}}),
    "contended-gpu": CONTENDED,
}
