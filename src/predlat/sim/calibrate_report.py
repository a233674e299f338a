"""The calibration's fit, reported: per-pair slowdowns and their error, the noise fit, and
each trace replayed on the calibrated device (latency p50/p99 per (model, K), simulated
against real)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from predlat.experiments.report import md_table, num, pct
from predlat.profiling.profile import Profile
from predlat.sim.calibrate import Calibration, calibrate
from predlat.sim.replay import latency_table, replay
from predlat.traces.trace_file import Trace, read_trace


def calibrate_files(
    traces: Sequence[Path], profile: Profile, name: str = "calibrated"
) -> tuple[Calibration, list[dict]]:
    """Calibrate on every trace together; then replay each on the calibrated device."""
    loaded = [read_trace(p) for p in traces]
    records = []
    for t in loaded:  # each file is its own device: keep batch ids apart across files
        records.extend(t.records)
    cal = calibrate(records, profile, name=name)
    rows: list[dict] = []
    for i, t in enumerate(loaded):
        k = _concurrency(t)
        rows.extend(latency_table(t.records, replay(cal.spec, t.records, k, seed=i), k))
    return cal, rows


def _concurrency(trace: Trace) -> int:
    k = trace.metadata.get("concurrency")
    if isinstance(k, int) and k >= 1:
        return k
    return 1 + max((r.slot for r in trace.records), default=0)


def render(cal: Calibration, rows: Sequence[dict]) -> str:
    law = cal.spec.law
    cores = "none" if law.cores is None else str(law.cores)
    lines = [
        f"# Calibration of '{cal.spec.name}'",
        "",
        f"{cal.records} batches. Cores (time-sharing): **{cores}**; rms log error of each "
        f"batch's work per candidate cores: "
        + ", ".join(f"{k}: {v:.4f}" for k, v in cal.cores_tried.items()),
        "",
        f"Noise: sigma {law.noise_sigma:.4f} + {law.noise_per_corunner:.4f} per co-runner "
        "at start; measured spread by co-runners at start: "
        + ", ".join(f"{k}: {v:.4f}" for k, v in cal.sigma_by_corunners.items()),
        "",
        *_table_lines(cal),
        "Solo scale (the traces' solo speed over the profile's, fitted per model): "
        + ", ".join(f"{m} {v:.3f}" for m, v in cal.solo_scale.items()),
        "",
        "## Pair slowdowns",
        "",
        "Error: the law's slowdown over each batch's real life against the observed one "
        "(latency / solo), over the batches of the model that overlapped the co-runner.",
        "",
        md_table(
            ["model", "co-runner", "slowdown", "batches", "mean error", "mean |error|"],
            [
                (
                    p.model,
                    p.co_runner,
                    num(p.slowdown, 3),
                    p.batches,
                    pct(p.mean_err),
                    pct(p.mean_abs_err),
                )
                for p in cal.pairs
            ],
            "llrrrr",
        ),
        "",
        "## Latency per (model, K): real trace vs its schedule replayed on the fit",
        "",
        md_table(
            ["model", "K", "batches", "real p50 ms", "sim p50 ms", "real p99 ms", "sim p99 ms"],
            [
                (
                    r["model"],
                    r["k"],
                    r["batches"],
                    num(r["real_p50_ms"]),
                    num(r["sim_p50_ms"]),
                    num(r["real_p99_ms"]),
                    num(r["sim_p99_ms"]),
                )
                for r in rows
            ],
            "lrrrrrr",
        ),
        "",
    ]
    return "\n".join(lines)


def _table_lines(cal: Calibration) -> list[str]:
    """The measured noise table, if any: its median, p99 and largest work factor per
    co-runner count (it replaces the log-normal's draws)."""
    table = cal.spec.law.noise_table
    if table is None:
        return []

    def at(k: int, u: float) -> str:
        return f"{math.exp(table.quantile(u, k)):.2f}"

    rows = ", ".join(
        f"{k}: {at(k, 0.5)} / {at(k, 0.99)} / {at(k, 1.0)}" for k in range(len(table.rows))
    )
    return [
        f"Noise drawn from a table measured on {cal.served} batches a runtime served (the "
        f"log-normal above is not drawn): work / solo at p50 / p99 / max by co-runners at "
        f"start: {rows}",
        "",
    ]
