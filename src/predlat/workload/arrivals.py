"""Open-loop arrival processes: when requests arrive, for which model, at which priority.

Everything is seeded: the same seed gives the same workload, so policies and predictors
can be compared on identical traffic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from predlat.errors import ConfigError

PROCESSES = ("poisson", "bursty")


@dataclass(frozen=True)
class Arrival:
    time: float  # seconds from the start of the workload
    model: str
    high_priority: bool = False


def poisson_times(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process of `rate`/s on [0, duration)."""
    if rate <= 0 or duration <= 0:
        return np.empty(0)
    count = rng.poisson(rate * duration)
    return np.sort(rng.uniform(0.0, duration, size=count))


def bursty_times(
    rate: float,
    duration: float,
    rng: np.random.Generator,
    burst_factor: float = 4.0,
    burst_fraction: float = 0.2,
    mean_period_s: float = 1.0,
) -> np.ndarray:
    """A two-state Markov-modulated Poisson process with the same mean rate as
    `poisson_times`: a `burst_fraction` of the time runs at `burst_factor` x the calm rate."""
    if rate <= 0 or duration <= 0:
        return np.empty(0)
    calm_rate = rate / (burst_fraction * burst_factor + (1.0 - burst_fraction))
    times: list[np.ndarray] = []
    t, bursting = 0.0, False
    while t < duration:
        mean_len = mean_period_s * (burst_fraction if bursting else 1.0 - burst_fraction)
        length = min(rng.exponential(mean_len), duration - t)
        segment_rate = calm_rate * (burst_factor if bursting else 1.0)
        times.append(t + poisson_times(segment_rate, length, rng))
        t += length
        bursting = not bursting
    return np.concatenate(times) if times else np.empty(0)


def open_loop_workload(
    rates: Mapping[str, float],
    duration: float,
    seed: int,
    process: str = "poisson",
    hp_frac: float = 0.0,
) -> list[Arrival]:
    """Independent arrival streams per model, merged in time order."""
    if process not in PROCESSES:
        raise ConfigError(f"unknown arrival process '{process}' (choose {', '.join(PROCESSES)})")
    if not 0.0 <= hp_frac <= 1.0:
        raise ConfigError(f"high-priority fraction must be in [0, 1], got {hp_frac}")
    if duration <= 0:
        raise ConfigError(f"duration must be positive, got {duration}")
    rng = np.random.default_rng(seed)
    draw = poisson_times if process == "poisson" else bursty_times
    arrivals: list[Arrival] = []
    for model in sorted(rates):  # sorted: the seed fixes the workload whatever the dict order
        rate = rates[model]
        if rate < 0:
            raise ConfigError(f"rate for {model} must be non-negative, got {rate}")
        times = draw(rate, duration, rng)
        high = rng.random(len(times)) < hp_frac
        arrivals.extend(Arrival(float(t), model, bool(h)) for t, h in zip(times, high, strict=True))
    arrivals.sort(key=lambda a: (a.time, a.model))
    return arrivals


def replay_workload(path: Path) -> list[Arrival]:
    """Arrivals from a Parquet or CSV file with columns `time` (or `timestamp`, s), `model`
    and optionally `high_priority` — e.g. a production request log."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path).to_pydict()
        else:
            import csv

            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
            header = [k for k in reader.fieldnames or [] if k is not None]
            table = {k: [r.get(k) for r in rows] for k in header}
    except (OSError, ValueError, csv.Error) as exc:
        raise ConfigError(f"cannot read workload {path}: {exc}") from None
    if "time" not in table and "timestamp" in table:
        table["time"] = table["timestamp"]
    if "time" not in table or "model" not in table:
        raise ConfigError(f"workload {path} needs columns 'time' and 'model'")
    if not table["time"]:
        raise ConfigError(f"workload {path} holds no arrivals")
    high = table.get("high_priority", [False] * len(table["time"]))
    arrivals = [
        _arrival(path, i, t, m, h)
        for i, (t, m, h) in enumerate(zip(table["time"], table["model"], high, strict=True))
    ]
    arrivals.sort(key=lambda a: (a.time, a.model))
    return arrivals


def _arrival(path: Path, i: int, time: object, model: object, high: object) -> Arrival:
    """Data row `i` (from 0) as an Arrival, or a ConfigError naming the row and field: a
    NaN or infinite time would keep the load generator waiting forever."""
    where = f"workload {path}, row {i + 1}"
    try:
        t = float(time)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t):
        raise ConfigError(f"{where}: time {time!r} is not a finite number of seconds")
    if model in (None, ""):
        raise ConfigError(f"{where}: no model")
    flag = str(high).strip().lower()
    if flag not in ("0", "1", "true", "false", "", "none"):  # none: a missing value
        raise ConfigError(f"{where}: high_priority {high!r} (0, 1, true or false)")
    return Arrival(t, str(model), flag in ("1", "true"))
