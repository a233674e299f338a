"""Report of `predlat simulate`: compare's plots and per-load tables (reused through its
public `write_plots` and `render_report`, whose compare-specific header and method are
swapped for the simulation's), plus wall time, simulated requests per wall second and
SLO capacity against the oracle."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from predlat.experiments.compare_report import load_table, write_load_plots
from predlat.experiments.report import md_table, num, pct, write_json


def write_simulate_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept = results.pop("_outcomes", {})
    plots = write_load_plots(results, out)
    paths = {"results": write_json(out / "results.json", results), **plots}
    paths["report"] = out / "report.md"
    paths["report"].write_text(render(results, {k: p.name for k, p in plots.items()}))
    if kept:
        paths["requests"] = _write_requests(kept, out / "requests.csv")
    return paths


def render(results: dict[str, Any], plots: dict[str, str]) -> str:
    loads = sorted(results["loads"], key=float)
    keep = [
        "Results per load\n\n" + "\n\n".join(load_table(results, k) for k in loads),
        "Plots\n\n" + "\n\n".join(f"![{k}]({name})" for k, name in plots.items()),
    ]
    sim = results["simulate"]
    cap = results["slo_capacity"]
    setup = "\n".join(
        [
            f"- devices: {sim['devices']} x {', '.join(sim['device'])} "
            f"({', '.join(sim['devices_described'])}); route: {sim['route']}",
            f"- models: {', '.join(sim['models'])}; policies: {', '.join(sim['policies'])}",
            f"- arrivals: {sim['arrivals']}, {sim['requests']} requests per run, "
            f"{pct(sim['hp_frac'], 0)} high priority, seed {sim['seed']}",
            f"- capacity: {results['capacity_rps']:.1f} requests/s; deadlines: "
            + ", ".join(f"{m} {d:.1f} ms" for m, d in results["deadlines_ms"].items()),
            _speed(results),
        ]
    )
    slo_rows = [
        (
            f"`{p}`",
            num(c.get("rps"), 1),
            num((c.get("first_miss_rps") or [None])[0], 1),
            "yes" if c.get("censored") else "no",
        )
        for p, c in cap.items()
    ]
    vs_oracle = results["ratios"]["slo_capacity"].get("oracle", {}).get("value")
    slo = results["slo"]
    parts = [
        "# predlat simulate: scheduling policies on simulated devices",
        setup,
        "## SLO capacity",
        md_table(["policy", "requests/s", "first miss above", "met at every load"], slo_rows)
        + f"\n\nThe highest offered rate seen to meet >= {pct(slo['hp_met'], 0)} of "
        f"high-priority and >= {pct(slo['met_frac'], 0)} of all deadlines (rejections count "
        f"as misses): the sweep brackets it, bisection narrows it "
        f"({sim['bisect_steps']} steps per policy).\n\n"
        f"{sim['ours']} / oracle: {num(vs_oracle)}",
        "## Speed",
        _speed(results),
        *("## " + s for s in keep),
        "## Method",
        "Every run streams the same seeded requests through a fresh simulated cluster on a "
        "virtual clock: each device has its own scheduler and predictor (the ones the real "
        "runtime uses), a front dispatcher routes each request. Metrics are those of "
        "`predlat compare`, but dispatch lags are not measured (shown as 0): a simulated "
        "batch starts at its decision plus its device's dispatch hand-off, zero unless "
        "its device.json sets one (`handoff`). `oracle` forecasts from the simulator's "
        "true law and every batch's true work, noise included, before it is submitted: "
        "it cannot know only what is dispatched later. Wall times depend on the machine's load.",
    ]
    return "\n\n".join(parts) + "\n"


def _speed(results: dict[str, Any]) -> str:
    rows = []
    for load in sorted(results["loads"], key=float):
        for p, e in results["loads"][load]["policies"].items():
            rows.append(
                (load, p, num(e.get("wall_s")), num(e.get("simulated_requests_per_wall_s"), 0))
            )
    return md_table(["load", "policy", "wall s", "simulated requests / wall s"], rows)


def _write_requests(kept: dict[str, list], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "run",
                "request_id",
                "model",
                "priority",
                "status",
                "arrival",
                "deadline",
                "start",
                "end",
                "batch_size",
            ]
        )
        for run, outcomes in kept.items():
            for o in outcomes:
                w.writerow(
                    [
                        run,
                        o.request_id,
                        o.model,
                        o.priority.name.lower(),
                        o.status,
                        o.arrival,
                        o.deadline,
                        o.start,
                        o.end,
                        o.batch_size,
                    ]
                )
    return path


def _speed(results: dict[str, Any]) -> str:
    line = (
        f"- wall time: {results['wall_s']:.1f} s; simulated {results['simulated_requests']} "
        f"requests at {results['simulated_requests_per_wall_s']:,.0f} per wall second"
    )
    jobs = results.get("jobs", 1)
    if jobs <= 1:
        return line
    return (
        f"{line} of one process; {jobs} worker processes ran the runs side by side, "
        f"{results['simulated_requests_per_command_s']:,.0f} per second of the command's wall"
    )
