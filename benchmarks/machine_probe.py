"""Probes of the machine a benchmark runs on, printed beside its figures.

On a shared VM the same code runs at different speeds from one window to the next, and
code that runs after the process slept runs slower than the same code back to back (the
caches and the CPU's state are cold: other tenants, idle states). A benchmark that prints
these probes lets a reader tell a slower machine from slower code.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np


def _fixed_work(keys: list[tuple[float, int]]) -> None:
    """Sorting, dict and float arithmetic, as a scheduling decision or a handler does."""
    table = {k: v * 1.5 for v, k in sorted(keys)}
    sum(math.exp(-v) for v in table.values())


def _keys(n: int) -> list[tuple[float, int]]:
    rng = random.Random(0)
    return [(rng.random(), i) for i in range(n)]


def machine_probe_ms(repeats: int = 21) -> float:
    """Median milliseconds of a fixed piece of interpreter work: the same on every run of
    every commit, so a slow window of a shared machine shows here as well as in the
    benchmark's own times."""
    keys = _keys(2000)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        _fixed_work(keys)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def idle_penalty_us(pause_s: float = 0.005, repeats: int = 300) -> tuple[float, float]:
    """Median microseconds of a small fixed piece of interpreter work (about what one
    request's handler costs) run back to back, and run each time after sleeping
    `pause_s` (at 200 requests/s a server sleeps about 5 ms between requests). Their
    ratio is what an idle gap adds to every piece of a request's path on this machine."""
    keys = _keys(150)
    warm, after_idle = [], []
    for i in range(repeats):
        t0 = time.perf_counter_ns()
        _fixed_work(keys)
        t1 = time.perf_counter_ns()
        _fixed_work(keys)  # back to back with the one before
        t2 = time.perf_counter_ns()
        if i:  # (the first pair is a warm-up)
            after_idle.append((t1 - t0) / 1e3)
            warm.append((t2 - t1) / 1e3)
        time.sleep(pause_s)
    return float(np.median(warm)), float(np.median(after_idle))
