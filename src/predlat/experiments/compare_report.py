"""Report and plots of the scheduling comparison (`predlat compare`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt

from predlat.experiments.report import md_table, num, pct, write_json

_MARKERS = {"serial": "s", "serial-1t": "D", "oblivious": "x", "coarse": "^", "predlat": "o"}


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


# -- plots ---------------------------------------------------------------------------------
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
    paths = {"capacity_plot": _capacity_plot(results, out / "slo_capacity.png")}
    return {**paths, **write_load_plots(results, out)}


def write_load_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Deadline satisfaction and live forecast error over the loads run, per policy."""
    paths: dict[str, Path] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, metric, title in (
        (axes[0], "hp_met", "high priority"),
        (axes[1], "met_frac", "all requests"),
    ):
        x, series = _series(results, metric)
        _plot(ax, x, series, "deadlines met")
        ax.set_title(f"Deadline satisfaction, {title}")
        ax.set_ylim(0, 1.02)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, loc="lower left")
    paths["deadlines_plot"] = _save(fig, out / "deadlines.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x, series = _series(results, "live_forecast_err")
    _plot(ax, x, series, "live forecast error (mean relative)")
    ax.set_title("Live forecast error of dispatched batches")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths["forecast_plot"] = _save(fig, out / "live_forecast_err.png")
    return paths


def _capacity_plot(results: dict[str, Any], path: Path) -> Path:
    cap = results["slo_capacity"]
    names = list(cap)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    heights = [cap[n]["rps"] or 0.0 for n in names]
    errors = [cap[n]["stderr"] or 0.0 for n in names]
    bars = ax.bar(names, heights, yerr=errors, capsize=4, color="tab:blue")
    for bar, n in zip(bars, names, strict=True):
        if cap[n].get("censored"):
            bar.set_hatch("//")  # met the SLO at every load tried: a lower bound
    ax.set_ylabel("SLO capacity (requests/s)")
    ax.set_title(f"SLO capacity ({results['regime']} regime, quantile {results['quantile']})")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- report.md -----------------------------------------------------------------------------
def render_report(results: dict[str, Any], plots: dict[str, str]) -> str:
    regime = results["regime"]
    parts = [
        "# predlat compare: scheduling policies on this machine",
        _setup(results),
        f"## SLO capacity ({regime} regime)",
        _capacity_table(results),
        f"![SLO capacity]({plots.get('capacity_plot', 'slo_capacity.png')})",
        "## Ratios",
        _ratios(results),
        "## Results per sweep load",
        *(load_table(results, key) for key in sorted(results["loads"], key=float)),
        "## Plots",
        f"![deadline satisfaction]({plots.get('deadlines_plot', 'deadlines.png')})",
        f"![live forecast error]({plots.get('forecast_plot', 'live_forecast_err.png')})",
        "## Method",
        _method(results),
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
    layouts = "; ".join(
        f"`{p}` {lay['slots']} slot(s) x {lay['threads']} thread(s) ({lay['regime']}, plans at "
        f"the {lay['plans_at']})"
        for p, lay in results["layouts"].items()
    )
    warm = results["warmup"]
    history = (
        f"{warm['batches']} batches, {warm['seconds']:g} s collected at loads "
        f"{', '.join(f'{x:g}' for x in warm['loads'])} (equal parts, random batch sizes; "
        f"other processes' CPU share meanwhile {pct(warm.get('foreign_cpu_frac'), 0)}"
        f"{_tries(warm.get('tries'))})"
        if warm.get("batches")
        else "none collected"
    )
    sources = ", ".join(f"{n}: {src}" for n, src in warm.get("predictors", {}).items())
    lines = [
        f"- models: {', '.join(cfg['models'])}",
        f"- planning quantile of every predictive policy: {results['quantile']}",
        f"- device: {cfg.get('device', 'onnxruntime')}, {results['cores']} usable "
        f"cores, regime **{results['regime']}**; {layouts}",
        f"- capacity unit (load 1): {results['capacity_rps']:.1f} requests/s; sweep loads "
        f"{', '.join(f'{x:g}' for x in cfg['loads'])}; {cfg['process']} arrivals, "
        f"{cfg['duration_s']:g} s per run, {pct(cfg['hp_frac'], 0)} high priority; " + _seeds(cfg),
        "- policy order: shuffled per load and seed (seeded; `order` in results.json)",
        f"- deadlines: {deadline_rule} ({deadlines})",
        f"- warm-up history: {history}; starting predictors: {sources or 'none'}",
        f"- SLO: >= {pct(results['slo']['hp_met'], 0)} of high-priority and >= "
        f"{pct(results['slo']['met_frac'], 0)} of all deadlines met (rejections count as "
        f"misses); {cfg['bisect_steps']} bisection step(s) per policy and seed",
        f"- wall time: {results['wall_s']:.0f} s (of which setup: profiling where not "
        f"cached, warm-up history, fitting: {results.get('setup_s', 0.0):.0f} s)",
    ]
    return "\n".join(lines)


def _tries(tries: int | None) -> str:
    return f", the quietest of {tries} histories" if tries and tries > 1 else ""


def _seeds(cfg: dict[str, Any]) -> str:
    repeats = cfg.get("repeats", 1)
    if repeats == 1:
        return f"seed {cfg['seed']} (one seed: no standard errors)"
    return f"seeds {cfg['seed']}..{cfg['seed'] + repeats - 1}, pooled with standard errors"


def _pm(value: float | None, err: float | None, digits: int = 1) -> str:
    return num(value, digits) + (f" ± {num(err, digits)}" if err is not None else "")


def _capacity_table(results: dict[str, Any]) -> str:
    rows = []
    unit = results["capacity_rps"]
    for name, c in results["slo_capacity"].items():
        first = [f"{x:.1f}" if x is not None else "none" for x in c["first_miss_rps"]]
        below = c["rps"] == 0 and c["first_miss_rps"] and None not in c["first_miss_rps"]
        rows.append(
            [
                f"`{name}`",
                f"< {min(c['first_miss_rps']):.1f} (missed at every load tried)"
                if below
                else _pm(c["rps"], c["stderr"]),
                _pm(c["load"], c.get("load_stderr"), 3),
                ", ".join(f"{x:.1f}" for x in c["per_seed_rps"]),
                ", ".join(first),
                "yes" if c["censored"] else "no",
            ]
        )
    headers = [
        "policy",
        "capacity req/s",
        "as load",
        "per seed",
        "first miss above (req/s)",
        "met at every load",
    ]
    note = (
        f"Capacity: the highest load seen to meet the SLO (load 1 = {unit:.1f} requests/s); "
        "± is the standard error over seeds. 'met at every load': a lower bound."
    )
    return md_table(headers, rows) + "\n\n" + note


def _ratios(results: dict[str, Any]) -> str:
    r = results["ratios"]
    ours = r["ours"]
    lines = [
        f"- SLO capacity of `{ours}` / `{p}`: {_pm(v['value'], v['stderr'], 2)}"
        for p, v in r["slo_capacity"].items()
    ]
    for key, by in sorted(r["live_forecast_err"].items(), key=lambda kv: float(kv[0])):
        parts = ", ".join(f"`{p}` {_pm(v['value'], v['stderr'], 2)}" for p, v in by.items())
        lines.append(f"- load {key}: live forecast error of `{ours}` / {parts}")
    return "\n".join(lines) or "n/a"


def load_table(results: dict[str, Any], key: str) -> str:
    entry = results["loads"][key]
    headers = [
        "policy",
        "hp met",
        "all met",
        "goodput/s",
        "p50 ms",
        "p99 ms",
        "rejected",
        "util",
        "live fc err",
        "> planned end",
        "lag p99 ms",
        "batch",
        "others' CPU",
    ]
    rows = []
    for name, m in entry["policies"].items():
        se = m.get("stderr", {})

        def f(k: str, scale: float = 100.0, digits: int = 1, m=m, se=se) -> str:
            v, e = m.get(k), se.get(k)
            return _pm(None if v is None else v * scale, None if e is None else e * scale, digits)

        rows.append(
            [
                f"`{name}`",
                f("hp_met"),
                f("met_frac"),
                f("goodput_rps", 1.0),
                f("p50_ms", 1.0),
                f("p99_ms", 1.0),
                f("rejected_frac"),
                f("utilization", digits=0),
                f("live_forecast_err", digits=0),
                f("planned_end_exceeded", digits=0),
                f("dispatch_lag_p99_ms", 1.0),
                num(m["mean_batch_size"], 2),
                f("foreign_cpu_frac", digits=0),
            ]
        )
    title = f"### load {key} ({entry['offered_rps']:.1f} requests/s offered)"
    return title + "\n\n" + md_table(headers, rows) + "\n\nFractions in %; ± standard error."


def _method(results: dict[str, Any]) -> str:
    return (
        "Every policy replays the same seeded open-loop workload per load and seed on a "
        "fresh runtime (the real device, wall clock), policies in a shuffled order. `hp met` "
        "and `all met` count met deadlines over all requests (rejected ones as missed). "
        "Goodput counts requests finished within their deadline per second of workload. "
        "Latency is arrival to end of the request's batch. Utilization is busy slot-time "
        "over slots x run span. `live fc err` is the mean over dispatched batches of "
        "|mean forecast end - actual end| / (actual end - dispatch decision), the forecast "
        "being the one the batch was admitted with; `> planned end` is the fraction of "
        "batches that ended after the end the policy planned with (the forecast quantile, "
        "or the mean for policies planning at the mean and for solo-latency policies). "
        "Predictive policies differ only in their predictor; every one starts from the "
        "same warm-up history and online predictors keep learning. `others' CPU` is the "
        "share of the machine's CPU time other processes used during the run (interference "
        "no policy sees); figures come with standard errors over seeds where there are "
        "several."
    )
