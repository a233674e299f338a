"""CPU time by process group, read from /proc (Linux): where a run's cores went.

On a small machine the replicas' compute, the client, Ray's own processes and anything
else share the same cores, so a scale-out figure means little without this split."""

from __future__ import annotations

import os
from collections.abc import Callable

Snapshot = dict[int, tuple[float, str]]  # pid -> (user + system CPU seconds, command)


def snapshot() -> Snapshot:
    """Every readable process's CPU seconds so far (empty where /proc is missing)."""
    if not os.path.isdir("/proc"):
        return {}
    hz = os.sysconf("SC_CLK_TCK")
    out: Snapshot = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        out[int(entry)] = ((int(fields[11]) + int(fields[12])) / hz, cmd)
    return out


def ray_groups(driver: int) -> Callable[[int, str], str]:
    """Groups for a Ray Serve run: its replicas, this process (client, front door and
    router), Ray's own processes, and everything else."""

    def group(pid: int, cmd: str) -> str:
        if "ServeReplica" in cmd:
            return "replicas"
        if pid == driver:
            return "client+front door+router"
        if "ray" in cmd:
            return "ray system"
        return "other processes"

    return group


def cpu_by_group(
    before: Snapshot, after: Snapshot, group: Callable[[int, str], str]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed per group."""
    out: dict[str, float] = {}
    for pid, (seconds, cmd) in after.items():
        spent = seconds - before.get(pid, (0.0, ""))[0]
        if spent > 0:
            name = group(pid, cmd)
            out[name] = out.get(name, 0.0) + spent
    return out
