"""The CPU time other processes take on a shared machine, sampled while measuring."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from predlat.errors import ConfigError

T = TypeVar("T")

# Above this share of the CPU taken by other processes, a measurement is not a quiet
# one: the profiler then keeps it for the run at hand but does not cache it. The
# environment variable raises it where a machine is never quiet (1 caches anything).
FOREIGN_CPU_LIMIT = 0.10
FOREIGN_CPU_LIMIT_ENV = "PREDLAT_FOREIGN_CPU_LIMIT"


def foreign_cpu_limit() -> float:
    text = os.environ.get(FOREIGN_CPU_LIMIT_ENV, "")
    try:
        return float(text) if text else FOREIGN_CPU_LIMIT
    except ValueError:
        raise ConfigError(f"{FOREIGN_CPU_LIMIT_ENV} must be a number, got {text!r}") from None


def quietest(
    take: Callable[[], T], share: Callable[[T], float], limit: float, tries: int
) -> tuple[T, int]:
    """`take()` again, up to `tries` times in all, while other processes took more than
    `limit` of the CPU during it (`share` of a result); the quietest result, and how
    many were taken."""
    best, made = take(), 1
    while share(best) > limit and made < tries:
        result, made = take(), made + 1
        if share(result) < share(best):
            best = result
    return best, made


class CpuMeter:
    """Share of the machine's CPU time that other processes used between two readings.

    On a shared machine, other work is interference that no co-runner feature can
    explain; traces record it so that reports can say how much there was, and the
    profiler refuses to cache a profile measured under it. Linux only
    (reads /proc); elsewhere `foreign_frac` is None.
    """

    def __init__(self) -> None:
        self._start = self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
            with open("/proc/self/stat") as fh:
                own = fh.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...
        busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
        total = busy + fields[3] + fields[4]
        return busy, total, int(own[11]) + int(own[12])  # own utime + stime, all threads

    def foreign_frac(self) -> float | None:
        """Other processes' CPU time / all CPU time available, since construction."""
        return self._frac(self._start, self._read())

    def sample(self) -> float | None:
        """The same since the previous `sample` (or construction)."""
        now = self._read()
        frac, self._last = self._frac(self._last, now), now
        return frac

    @staticmethod
    def _frac(start: tuple[int, int, int] | None, end: tuple[int, int, int] | None) -> float | None:
        if start is None or end is None:
            return None
        busy, total, own = (e - s for e, s in zip(end, start, strict=True))
        return min(1.0, max(0.0, (busy - own) / total)) if total > 0 else None


class HostCpuMeter:
    """CPU this process spent outside the device's batches between construction and
    `read`: the serving host's own work (scheduling, hand-offs, threads, an in-process
    client). On a CPU whose cores the batches fill, it is taken from them, which a
    simulated device calibrated on batches alone does not see. Needs a device that
    counts its batches' CPU (`compute_cpu_s`); with intra-op threads > 1, ONNX
    Runtime's pool threads would count as host, so the caller passes `exact=False` and
    gets None."""

    def __init__(self, device: object, exact: bool = True) -> None:
        self._compute = getattr(device, "compute_cpu_s", None) if exact else None
        self._start = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        if self._compute is None:
            return None
        return time.perf_counter(), time.process_time(), self._compute()

    def read(self) -> tuple[float, float] | None:
        """(host CPU seconds, wall seconds) since construction, or None."""
        end = self._read()
        if end is None or self._start is None:
            return None
        wall, process, compute = (e - s for e, s in zip(end, self._start, strict=True))
        return max(0.0, process - compute), wall
