"""Report and plots of the scheduling comparison (`predlat compare`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt

from predlat.experiments.report import md_table, num, pct, write_json

_MARKERS = {"serial": "s", "oblivious": "x", "coarse": "^", "predlat": "o"}


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """DIR/results.json, DIR/report.md and the PNG plots; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out)
    paths = {"results": write_json(out / "results.json", results), **plots}
    report = out / "report.md"
    report.write_text(render_report(results, {k: p.name for k, p in plots.items()}))
    paths["report"] = report
    return paths


def _series(results: dict[str, Any], metric: str) -> tuple[list[float], dict[str, list]]:
    loads = sorted(results["loads"], key=float)
    policies = results["config"]["policies"]
    x = [float(k) for k in loads]
    return x, {
        p: [results["loads"][k]["policies"].get(p, {}).get(metric) for k in loads] for p in policies
    }


def _plot(ax: plt.Axes, x: Sequence[float], series: dict[str, list], ylabel: str) -> None:
    for name, ys in series.items():
        pts = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
        if pts:
            ax.plot(
                [a for a, _ in pts],
                [b for _, b in pts],
                marker=_MARKERS.get(name, "."),
                label=name,
                linewidth=1.4,
            )
    ax.set_xlabel("load (fraction of device capacity)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, metric, title in (
        (axes[0], "hp_met", "high priority"),
        (axes[1], "lp_met", "low priority"),
    ):
        x, series = _series(results, metric)
        _plot(ax, x, series, "deadlines met (of all requests)")
        ax.set_title(f"Deadline satisfaction, {title}")
        ax.set_ylim(0, 1.02)
        ax.axhline(0.99, color="black", linestyle=":", linewidth=0.8)
    axes[1].legend(fontsize=8, loc="lower left")
    paths["deadlines_plot"] = _save(fig, out / "deadlines.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x, series = _series(results, "goodput_rps")
    _plot(ax, x, series, "goodput (requests within deadline / s)")
    x2, offered = _offered(results)
    ax.plot(x2, offered, color="0.6", linestyle="--", linewidth=1.0, label="offered")
    ax.set_title("Goodput")
    ax.legend(fontsize=8)
    paths["goodput_plot"] = _save(fig, out / "goodput.png")
    return paths


def _offered(results: dict[str, Any]) -> tuple[list[float], list[float]]:
    loads = sorted(results["loads"], key=float)
    return [float(k) for k in loads], [results["loads"][k]["offered_rps"] for k in loads]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- report.md -----------------------------------------------------------------------------
def render_report(results: dict[str, Any], plots: dict[str, str]) -> str:
    cfg = results["config"]
    parts = [
        "# predlat compare: scheduling policies on this machine",
        _setup(results),
        "## Targets",
        _targets(results),
        "## Results per load",
        *(_load_table(results, key) for key in sorted(results["loads"], key=float)),
        "## Plots",
        f"![deadline satisfaction]({plots.get('deadlines_plot', 'deadlines.png')})",
        f"![goodput]({plots.get('goodput_plot', 'goodput.png')})",
        "## Method",
        _method(cfg),
    ]
    return "\n\n".join(parts) + "\n"


def _setup(results: dict[str, Any]) -> str:
    cfg = results["config"]
    deadlines = ", ".join(f"{m} {d:.1f} ms" for m, d in results["deadlines_ms"].items())
    deadline_rule = (
        f"{cfg['deadline_ms']:g} ms"
        if cfg.get("deadline_ms") is not None
        else f"{cfg['deadline_factor']:g} x solo latency at batch 1"
    )
    lines = [
        f"- models: {', '.join(cfg['models'])}",
        f"- policies: {', '.join(cfg['policies'])}; ours: `{cfg['ours']}` "
        f"(forecast quantile {cfg['quantile']:g})",
        f"- device: {cfg.get('device') or cfg.get('provider', 'onnxruntime')}, "
        f"{cfg['slots']} slots x "
        f"{cfg['threads']} intra-op thread(s); `serial`: one "
        f"slot with {results.get('serial_threads') or 'n/a'} thread(s) (fastest measured)",
        f"- capacity: {results['capacity_rps']:.1f} requests/s; loads "
        f"{', '.join(f'{x:g}' for x in cfg['loads'])}; {cfg['process']} arrivals, "
        f"{cfg['duration_s']:g} s per run, {pct(cfg['hp_frac'], 0)} high priority, " + _seeds(cfg),
        f"- deadlines: {deadline_rule} ({deadlines})",
        f"- training trace for fitted predictors: {results['training_batches']} batches "
        f"({cfg['train_s']:g} s at load {cfg['train_load']:g})",
        f"- wall time: {results['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def _seeds(cfg: dict[str, Any]) -> str:
    repeats = cfg.get("repeats", 1)
    if repeats == 1:
        return f"seed {cfg['seed']}"
    last = cfg["seed"] + repeats - 1
    return f"{repeats} runs per load and policy (seeds {cfg['seed']}..{last}), pooled"


def _verdict(flag: bool | None) -> str:
    return (
        "n/a (policy missing or no such load)" if flag is None else ("met" if flag else "NOT met")
    )


def _targets(results: dict[str, Any]) -> str:
    t = results["targets"]
    ours = t["ours"]
    stressed = t["loads_where_oblivious_below_90pct"]
    lines = [
        f"- loads where `oblivious` meets < 90% of deadlines: "
        f"{', '.join(stressed) if stressed else 'none in this sweep'}",
    ]
    for c in t["stressed_loads"]:
        lines.append(
            f"  - load {c['load']}: `{ours}` high-priority met {pct(c['hp_met'])}, goodput "
            f"{num(c['goodput_vs_serial'])} x serial -> {_verdict(c['met'])}"
        )
    lines.append(
        f"- `{ours}` >= 99% high-priority met and >= 1.2 x serial goodput at such a "
        f"load: {_verdict(t['hp_99_and_goodput_1_2x_serial'])}"
    )
    lines.append(
        f"- `{ours}` never below `coarse` on high-priority deadlines: "
        f"{_verdict(t['never_worse_than_coarse_hp'])}"
    )
    for b in t.get("below_coarse_hp", []):
        scale = ""
        if b["gap_requests"] is not None and b["stderr"] is not None:
            scale = (
                f" ({b['gap_requests']:.0f} of {b['requests']:.0f} high-priority requests; "
                f"standard error of the difference: {b['stderr'] * 100:.2f} points)"
            )
        lines.append(f"  - load {b['load']}: {b['gap'] * 100:.2f} points below{scale}")
    return "\n".join(lines)


def _load_table(results: dict[str, Any], key: str) -> str:
    entry = results["loads"][key]
    headers = [
        "policy",
        "hp met",
        "lp met",
        "goodput/s",
        "throughput/s",
        "p50 ms",
        "p99 ms",
        "rejected",
        "util",
        "pred err",
        "lag p50/p99 ms",
        "batch",
    ]
    rows = []
    for name, m in entry["policies"].items():
        rows.append(
            [
                f"`{name}`",
                pct(m["hp_met"]),
                pct(m["lp_met"]),
                num(m["goodput_rps"], 1),
                num(m["throughput_rps"], 1),
                num(m["p50_ms"], 1),
                num(m["p99_ms"], 1),
                pct(m["rejected_frac"]),
                pct(m["utilization"], 0),
                pct(m["pred_mean_rel_err"], 0),
                f"{num(m['dispatch_lag_p50_ms'], 2)} / {num(m['dispatch_lag_p99_ms'], 1)}",
                num(m["mean_batch_size"], 2),
            ]
        )
    title = f"### load {key} ({entry['offered_rps']:.1f} requests/s offered)"
    return title + "\n\n" + md_table(headers, rows)


def _method(cfg: dict[str, Any]) -> str:
    return (
        "Every policy replays the same seeded open-loop workload per load on a fresh runtime "
        "(the real ONNX Runtime device, wall clock). `hp met` and `lp met` count met deadlines "
        "over all requests of that priority, rejected ones as missed. Goodput counts requests "
        "finished within their deadline per second of workload; throughput counts all "
        "finished requests. Latency is arrival to end of the request's batch. Utilization is "
        "busy slot-time over slots x run span. `pred err` is the mean relative error of the "
        "latency forecast each batch was dispatched with (solo latency for `serial` and "
        "`oblivious`). Dispatch lag is decision to start on the device. `coarse` and "
        "`predlat` start from predictors fitted on the same training trace; only `predlat` "
        "keeps learning. Timings on a shared machine are noisy: rerun with the same seed to "
        "see the spread."
    )
