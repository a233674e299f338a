"""Request streams for simulations, generated lazily (millions of requests in flat memory).

- `poisson` / `bursty`: one Poisson (or two-state Markov-modulated, the same mean rate)
  process of the total rate, each arrival's model drawn by its share of the rate: the
  same law as independent streams per model. Exactly `count` requests.
- CSV: columns `timestamp` (s) and `model`, optionally `priority` (`high`/`low`, or 0/1
  with 0 = high as predlat's Priority) and `deadline_ms`; rows in any order are sorted.
- Azure Functions trace (Shahrad et al., ATC '20; `invocations_per_function_md.anon.*.csv`):
  columns HashOwner, HashApp, HashFunction, Trigger, then `1` .. `1440`, invocations per
  minute. Function i (in file order) maps to model i mod |models|; each minute's
  invocations are spread uniformly over that minute (seeded).
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from predlat.errors import ConfigError
from predlat.scheduling.request import Priority, Request

_CHUNK = 65536


def synthetic_requests(
    rates: Mapping[str, float],
    count: int,
    deadline_s: Callable[[str], float],
    seed: int = 0,
    process: str = "poisson",
    hp_frac: float = 0.0,
    burst_factor: float = 4.0,
    burst_fraction: float = 0.2,
    mean_period_s: float = 1.0,
) -> Iterator[Request]:
    if process not in ("poisson", "bursty"):
        raise ConfigError(f"unknown arrival process '{process}' (choose poisson, bursty, or a CSV)")
    models = sorted(rates)
    total = float(sum(rates[m] for m in models))
    if not total > 0:
        raise ConfigError("arrival rates must sum to a positive rate")
    p = np.array([rates[m] / total for m in models])
    deadlines = [deadline_s(m) for m in models]
    rng = np.random.default_rng(seed)
    calm = total / (burst_fraction * burst_factor + 1 - burst_fraction)
    t, made, bursting = 0.0, 0, False
    phase_end = rng.exponential(mean_period_s * (1 - burst_fraction))
    while made < count:
        n = min(_CHUNK, count - made)
        # Python numbers, not NumPy scalars: every time derived from an arrival (the
        # clock, deadlines, forecasts) would otherwise pay NumPy's scalar arithmetic.
        which = rng.choice(len(models), size=n, p=p).tolist()
        high = (rng.random(n) < hp_frac).tolist()
        gaps = rng.exponential(1.0, size=n).tolist()
        for i in range(n):
            if process == "poisson":
                t += gaps[i] / total
            else:  # advance through calm/burst phases, at each phase's rate
                need = gaps[i]
                while True:
                    rate = calm * (burst_factor if bursting else 1.0)
                    if t + need / rate <= phase_end:
                        t += need / rate
                        break
                    need -= (phase_end - t) * rate
                    t = phase_end
                    bursting = not bursting
                    frac = burst_fraction if bursting else 1 - burst_fraction
                    phase_end = t + rng.exponential(mean_period_s * frac)
            k = which[i]
            yield Request(
                made, models[k], t, t + deadlines[k], Priority.HIGH if high[i] else Priority.LOW
            )
            made += 1


def csv_requests(
    path: Path,
    models: Sequence[str],
    deadline_s: Callable[[str], float],
    limit: int | None = None,
    seed: int = 0,
) -> list[Request]:
    """A CSV of requests, or an Azure Functions invocation trace (detected by its
    columns); at most `limit` requests, in arrival order, times starting at 0."""
    try:
        with Path(path).open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            if "HashFunction" in header:
                requests = _azure(reader, header, path, models, deadline_s, limit, seed)
            else:
                requests = _plain(reader, header, path, set(models), deadline_s, limit)
    except OSError as exc:
        raise ConfigError(f"cannot read arrivals {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"arrivals {path}: not a text CSV ({exc})") from None
    if not requests:
        raise ConfigError(f"arrivals {path}: no requests in the file")
    return requests


def _plain(reader, header, path, models, deadline_s, limit) -> list[Request]:
    if "timestamp" not in header or "model" not in header:
        raise ConfigError(f"arrivals {path}: needs columns 'timestamp' and 'model'")
    rows = []
    for line, row in enumerate(reader, start=2):
        t = _finite(row["timestamp"])
        if t is None:  # NaN or inf would never be reached: the run would not end
            raise ConfigError(f"arrivals {path}:{line}: timestamp '{row['timestamp']}'")
        model = row["model"]
        if model is None:
            raise ConfigError(f"arrivals {path}:{line}: the row has no model")
        if model not in models:
            raise ConfigError(f"arrivals {path}:{line}: model '{model}' is not on the devices")
        pr = (row.get("priority") or "low").strip().lower()
        if pr not in ("high", "low", "0", "1"):
            raise ConfigError(f"arrivals {path}:{line}: priority '{pr}' (high, low, 0, 1)")
        high = pr in ("high", "0")
        dl = row.get("deadline_ms")
        ms = None if dl in (None, "") else _finite(dl)
        if dl not in (None, "") and (ms is None or ms <= 0):
            raise ConfigError(f"arrivals {path}:{line}: deadline_ms '{dl}' (a positive number)")
        d = deadline_s(model) if ms is None else ms / 1e3
        rows.append((t, model, high, d))
    rows.sort(key=lambda r: r[0])
    rows = rows[:limit] if limit else rows
    t0 = rows[0][0] if rows else 0.0
    return [
        Request(i, m, t - t0, t - t0 + d, Priority.HIGH if h else Priority.LOW)
        for i, (t, m, h, d) in enumerate(rows)
    ]


def _finite(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _azure(reader, header, path, models, deadline_s, limit, seed) -> list[Request]:
    minutes = [c for c in header if c.isdigit()]
    rng = np.random.default_rng(seed)
    models = sorted(models)
    times: list[tuple[float, str]] = []
    for i, row in enumerate(reader):
        model = models[i % len(models)]
        for c in minutes:
            text = (row[c] or "0").strip()
            if not text.isdigit():
                raise ConfigError(
                    f"arrivals {path}:{i + 2}: minute {c} has '{text}' invocations "
                    "(a non-negative integer)"
                )
            n = int(text)
            if n:
                start = (int(c) - 1) * 60.0
                times.extend((float(t), model) for t in start + rng.uniform(0, 60.0, n))
    if limit:
        times = heapq.nsmallest(limit, times)
    times.sort()
    return [Request(i, m, t, t + deadline_s(m)) for i, (t, m) in enumerate(times)]
