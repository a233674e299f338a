"""Lowering the CPU priority of compute threads, so latency-critical ones win the cores.

A server on a few cores runs its event loop (parsing requests, refusing at the door,
handing batches over) beside compute threads that keep every core busy under load. At
equal priority the kernel makes a waking loop wait its turn behind them: on a 2-core
machine the loop thread spent about a third of the wall time runnable but not running,
which is what a door refusal's tail latency was made of. Compute threads at a higher
nice value still get every cycle the loop does not want (the scheduler is
work-conserving), but the loop runs as soon as it wakes.

Linux only: there `nice` is per thread (`setpriority(PRIO_PROCESS, tid)`), and raising a
nice value needs no privilege. Elsewhere nothing is changed.
"""

from __future__ import annotations

import os
import sys

MAX_NICE = 19


def lower_priority(steps: int, tid: int = 0) -> bool:
    """Raise the nice value of thread `tid` (a native thread id; 0: the calling thread)
    by `steps`, capped at 19. False when nothing changed (steps <= 0, not Linux, or the
    thread is gone)."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + steps))
    except OSError:
        return False
    return True


def lower_device_priority(device: object, steps: int) -> int:
    """`device.lower_priority(steps)` for a device with compute threads of its own (slot
    threads); 0 for any other (a simulated or remote one) or when steps <= 0."""
    lower = getattr(device, "lower_priority", None)
    return lower(steps) if steps > 0 and callable(lower) else 0
