"""The study's outputs: progress display, plots, report.md and results.json."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from predlat.experiments.plots import cdf_plot, grouped_bars, series_plot
from predlat.experiments.report import md_table, num, pct, write_json
from predlat.experiments.study import (
    POSTERIOR_SUFFIX,
    QUIET_FOREIGN_CPU,
    STAT_KEYS,
    GridEvaluation,
    ShiftEvaluation,
    StudyConfig,
    rolling_mean,
    to_jsonable,
)


class StudyProgress:
    """An overall bar over the study's steps, a bar for the current step, and a log."""

    def __init__(self, console: Console, enabled: bool, config: StudyConfig) -> None:
        self.console = console
        self.enabled = enabled
        shift = 3 if config.shift else 0  # two traces and their evaluation
        colocation = 1 if config.colocation_ks else 0
        self.total = 2 + colocation + len(config.grid) + shift
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        self._done = -1

    def __enter__(self) -> StudyProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("[bold]study", total=self.total)
            self._current = self._progress.add_task("", total=1)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def step(self, description: str) -> None:
        self._done += 1
        elapsed = time.perf_counter() - self.started
        self.log(f"[{self._done + 1}/{self.total}] {description}", elapsed)
        if self._progress is not None:
            self._progress.update(self._overall, completed=self._done)
            self._progress.reset(self._current, total=1, description=f"  {description}")

    def sub_progress(self, done: float, total: float) -> None:
        if self._progress is not None:
            self._progress.update(self._current, completed=done, total=total)

    def detail(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._current, description=f"  {text}")

    def log(self, text: str, elapsed: float | None = None) -> None:
        elapsed = time.perf_counter() - self.started if elapsed is None else elapsed
        self.console.print(f"[dim]{elapsed:6.0f}s[/] {text}", highlight=False)


# -- plots -----------------------------------------------------------------------------
def write_plots(
    out_dir: Path,
    results: dict[str, Any],
    grid: GridEvaluation,
    shift: ShiftEvaluation | None,
    config: StudyConfig,
) -> dict[str, str]:
    """Every figure of the report; returns {figure: file name}."""
    floor = results["noise_floor"].get("mean_rel_err")
    marks = {"noise floor": floor} if floor is not None else {}
    colocation = (results.get("colocation_floor") or {}).get("mean_rel_err")
    if colocation is not None:
        marks["co-location floor"] = colocation
    forecast = {
        n: [p.rel_err for p in grid.pooled(n)]
        for n in grid.predictions
        if not n.endswith(POSTERIOR_SUFFIX)
    }
    files = {}
    files["cdf"] = cdf_plot(
        forecast,
        out_dir / "error_cdf.png",
        title="Relative error per predictor (forecast mode, all test parts)",
        xlabel="|predicted - actual| / actual",
        vlines=marks,
    ).name
    posterior = {
        n: [p.rel_err for p in grid.pooled(n)]
        for n in grid.predictions
        if n.endswith(POSTERIOR_SUFFIX)
    }
    if posterior:
        files["cdf_posterior"] = cdf_plot(
            posterior,
            out_dir / "error_cdf_posterior.png",
            title="Relative error, posterior mode (real timeline)",
            xlabel="|predicted - actual| / actual",
            vlines=marks,
        ).name
    per_model = {n: results["predictors"][n]["per_model"] for n in forecast}
    files["per_model"] = grouped_bars(
        per_model,
        out_dir / "error_per_model.png",
        title="Mean relative error per model (forecast mode)",
        ylabel="mean relative error",
        hline=floor,
        hline_label="noise floor",
    ).name
    if shift is not None:
        series = {
            n: rolling_mean(e, config.window, config.min_periods) for n, e in shift.errors.items()
        }
        files["shift"] = series_plot(
            series,
            out_dir / "shift_error.png",
            title=f"Error over time across the shift (rolling mean of {config.window} batches)",
            xlabel="batch (start order)",
            ylabel="mean relative error",
            vline=shift.shift_index,
            vline_label="shift",
            background=shift.foreign or None,
            background_label="other processes' CPU share (shaded)",
        ).name
    return files


# -- report.md -------------------------------------------------------------------------
def render_report(results: dict[str, Any], plots: dict[str, str], config: StudyConfig) -> str:
    parts = [
        "# predlat study: latency prediction under co-location",
        _answer(results),
        _comparison(results, plots),
        _per_trace(results, config),
        _per_model(results, plots),
        _shift(results, plots, config),
        _method(results, config),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _verdict(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**not met**")


def _answer(results: dict[str, Any]) -> str:
    t = results["targets"]
    rls, coarse, floor = (
        t["fine_rls_mean_rel_err"],
        t["coarse_mean_rel_err"],
        t["noise_floor_mean_rel_err"],
    )
    lines = ["## Answer", ""]
    ratio = t["fine_rls_over_coarse"]
    if ratio is not None:
        how = f"{1 / ratio:.2f}x lower" if ratio < 1 else f"{ratio:.2f}x higher"
        lines.append(
            f"- **fine-rls** (forecast mode: what a scheduler can use) has a mean relative "
            f"error of **{pct(rls)}**; **coarse** (the gpulet form) **{pct(coarse)}**: "
            f"fine-rls's error is {how} than coarse's. Target (at most a third of coarse's): "
            f"{_verdict(t['at_most_third_of_coarse'])}."
        )
    floor_ratio = t["fine_rls_over_noise_floor"]
    if floor_ratio is not None:
        lines.append(
            f"- **Noise floor** (fresh repeated solo runs, each predicted by its own median): "
            f"**{pct(floor)}**. fine-rls is at **{floor_ratio:.1f}x** the floor. "
            f"Target (at most 1.5x): {_verdict(t['within_1_5x_noise_floor'])}."
        )
    colocation = _colocation_line(results)
    if colocation:
        lines.append(colocation)
    forecast = {
        n: v
        for n, v in results["predictors"].items()
        if not n.endswith(POSTERIOR_SUFFIX) and v["mean_rel_err"] is not None
    }
    if forecast:
        best = min(forecast, key=lambda n: forecast[n]["mean_rel_err"])
        best_err = pct(forecast[best]["mean_rel_err"])
        lines.append(f"- Best predictor in forecast mode: **{best}** ({best_err}).")
    adaptive = t.get("adaptive_recovery_batches") or {}
    if adaptive:
        shown = ", ".join(
            f"{n}: {'never' if v is None else f'{v} batches'}" for n, v in adaptive.items()
        )
        lines.append(
            f"- Shift: adaptive predictors back within 1.5x their pre-shift error after "
            f"{shown}. Target (within 300 batches): {_verdict(t['adaptive_recover_within_300'])}."
        )
    if t.get("quiet_batches"):
        q_rls, q_coarse = t["quiet_fine_rls_mean_rel_err"], t["quiet_coarse_mean_rel_err"]
        lines.append(
            f"- On the {t['quiet_batches']} test batches that started while other processes "
            f"used under {QUIET_FOREIGN_CPU:.0%} of the CPU: fine-rls {pct(q_rls)}, coarse "
            f"{pct(q_coarse)} (predictors fitted on all training batches)."
        )
    foreign = results.get("foreign_cpu") or {}
    if foreign.get("traces_mean") is not None:
        lines.append(
            f"- Other processes used on average {pct(foreign['traces_mean'], 0)} of this "
            f"machine's CPU while the traces ran (up to {pct(foreign['traces_max'], 0)} in "
            f"one trace; {pct(foreign.get('noise_floor'), 0)} during the noise floor). "
            "That load is interference no predictor sees: it inflates every error here, "
            "and runs on a busier or quieter machine differ by several points."
        )
    else:
        lines.append(
            "- Timings on a shared machine vary from run to run, and so does every error here."
        )
    return "\n".join(lines)


def _colocation_line(results: dict[str, Any]) -> str:
    floor = results.get("colocation_floor") or {}
    per_k = floor.get("per_k") or {}
    if not per_k:
        return ""
    shown = ", ".join(f"**{pct(v)}** at K={k}" for k, v in per_k.items())
    ratio = results["targets"].get("fine_rls_over_colocation_floor")
    versus = "" if ratio is None else f"; fine-rls is at **{ratio:.1f}x** it"
    return (
        f"- **Co-location noise floor** (identical co-locations repeated, each batch "
        f"predicted by its own median): {shown} ({pct(floor.get('mean_rel_err'))} overall). "
        f"No predictor can beat this on this machine{versus}."
    )


def _comparison(results: dict[str, Any], plots: dict[str, str]) -> str:
    preds = results["predictors"]
    order = sorted(
        preds,
        key=lambda n: (n.endswith(POSTERIOR_SUFFIX), preds[n]["mean_rel_err"] or float("inf")),
    )
    rows = []
    for name in order:
        s = preds[name]
        mode = "posterior" if name.endswith(POSTERIOR_SUFFIX) else "forecast"
        quiet = s.get("quiet") or {}
        rows.append(
            [
                name,
                mode,
                *(pct(s[k]) for k in STAT_KEYS),
                s["batches"],
                f"{pct(quiet.get('mean_rel_err'))} ({quiet.get('batches', 0)})",
            ]
        )
    rows.append(_floor_row("noise floor", "solo repeats", results["noise_floor"]))
    colocation = results.get("colocation_floor")
    if colocation:
        rows.append(_floor_row("co-location noise floor", "co-located repeats", colocation))
    table = md_table(
        [
            "predictor",
            "mode",
            "mean rel err",
            "p50",
            "p95",
            "p99",
            "under_frac",
            "q95_exceed_frac",
            "batches",
            "quiet: mean rel err (batches)",
        ],
        rows,
        "ll" + "r" * 8,
    )
    text = [
        "## Comparison",
        "",
        f"Relative error |predicted - actual| / actual on the test parts of all "
        f"{len(results['per_trace'])} traces ({results['test_batches']} batches; "
        f"{results['train_batches']} batches trained on). under_frac: share of batches "
        "predicted faster than they ran; q95_exceed_frac: share that ran longer than the "
        "predicted p95 (about 5% when the quantile is calibrated). Quiet: only the batches "
        f"that started while other processes used under {QUIET_FOREIGN_CPU:.0%} of the CPU. "
        "Forecast mode predicts at "
        "dispatch from running batches' forecast ends; posterior mode uses the real timeline "
        "(it judges the model form, and no scheduler can use it).",
        "",
        table,
        "",
        f"![error CDF]({plots['cdf']})",
    ]
    if "cdf_posterior" in plots:
        text += ["", f"![error CDF, posterior]({plots['cdf_posterior']})"]
    return "\n".join(text)


def _per_trace(results: dict[str, Any], config: StudyConfig) -> str:
    names = [n for n in results["predictors"] if not n.endswith(POSTERIOR_SUFFIX)]
    rows = []
    for t in results["per_trace"]:
        rows.append(
            [
                t["name"],
                t["concurrency"],
                f"{t['load']:.2f}",
                t["batches"],
                num(t["mean_concurrency"]),
                num(t["mean_slowdown"], suffix="x"),
                pct(t.get("foreign_cpu_frac"), 0),
                *(pct(t["mean_rel_err"].get(n)) for n in names),
            ]
        )
    sets = "; ".join(f"{k} = {', '.join(v)}" for k, v in config.model_sets.items())
    return "\n".join(
        [
            "## Per trace (forecast mode, mean relative error on its test part)",
            "",
            f"Model sets: {sets}. Mean concurrency: batches running on average while the device "
            "is busy. Slowdown: latency / solo latency. Other CPU: share of the machine's CPU "
            "that other processes used meanwhile.",
            "",
            md_table(
                ["trace", "K", "load", "batches", "mean conc", "slowdown", "other CPU", *names],
                rows,
            ),
        ]
    )


def _per_model(results: dict[str, Any], plots: dict[str, str]) -> str:
    names = [n for n in results["predictors"] if not n.endswith(POSTERIOR_SUFFIX)]
    models = sorted({m for n in names for m in results["predictors"][n]["per_model"]})
    floor = results["noise_floor"].get("per_model", {})
    rows = [
        [m, *(pct(results["predictors"][n]["per_model"].get(m)) for n in names), pct(floor.get(m))]
        for m in models
    ]
    return "\n".join(
        [
            "## Per model (forecast mode, mean relative error)",
            "",
            md_table(["model", *names, "noise floor"], rows),
            "",
            f"![error per model]({plots['per_model']})",
        ]
    )


def _shift(results: dict[str, Any], plots: dict[str, str], config: StudyConfig) -> str:
    shift = results.get("shift")
    if not shift or config.shift is None:
        return ""
    before, after = config.shift.before, config.shift.after
    info = results.get("shift_info", {})
    rows = []
    for name, s in shift.items():
        rec = s["recovery_batches"]
        rows.append(
            [
                name,
                "yes" if s.get("online") else "no",
                pct(s["before_mean_rel_err"]),
                pct(s["after_mean_rel_err"]),
                pct(s["after_last_window_mean_rel_err"]),
                "never" if rec is None else rec,
            ]
        )
    return "\n".join(
        [
            "## Shift: new models at a new load",
            "",
            f"Each predictor is fitted on the first {config.train_frac:.0%} of a trace of "
            f"{', '.join(before.models)} at load {before.load} (K = {before.concurrency}; "
            f"{info.get('train_batches', '?')} batches), then streams, in forecast mode and "
            f"learning online where it can, the rest of that trace "
            f"({info.get('before_batches', '?')} batches, the pre-shift error) followed by a "
            f"trace of {', '.join(after.models)} at load {after.load} "
            f"({info.get('after_batches', '?')} batches). Recovery: batches after the shift until "
            f"the rolling mean error over the last {config.window} post-shift batches (at least "
            f"{config.min_periods}) is back within {config.recovery_factor}x the pre-shift error; "
            f"{config.min_periods} means it never left that band, 'never' that it did not come "
            "back before the stream ended. 'Last window' is where each predictor ends up.",
            "",
            md_table(
                [
                    "predictor",
                    "online",
                    "before",
                    "after (all)",
                    "after (last window)",
                    "recovery batches",
                ],
                rows,
                "llrrrr",
            ),
            "",
            f"![error over time across the shift]({plots['shift']})",
        ]
    )


def _method(results: dict[str, Any], config: StudyConfig) -> str:
    m = results["machine"]
    timings = results.get("timings", {})
    shown = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items())
    floor = results["noise_floor"]
    lines = [
        "## Method",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['provider']}, "
        f"{m['intra_op_threads']} intra-op thread per slot; "
        f"predlat {results['predlat_version']}; mode `{config.mode}`.",
        f"- Profile: batch sizes {', '.join(map(str, config.profile_sizes))}, "
        f"{config.profile_repeats} repeats (reused from the cache when still valid).",
        "- Traces: open-loop Poisson arrivals, equal rate per model; load L = L x capacity, "
        "capacity = min(K, cores) / mean over models of (solo latency of a batch of 4) / 4, "
        "in requests/s (interference left out: it is what is measured). Per-model queues, "
        "random target batch sizes 1..8 (a queue is dispatched when it reaches its target or "
        "its oldest request has waited target / rate), up to K batches at once.",
        f"- Split: first {config.train_frac:.0%} of each trace's batches by start time to "
        "train, the rest to test. Every predictor is fitted once on all training parts "
        "pooled (one predictor across all configurations); each test part is evaluated from "
        "a copy of that fit, online predictors learning from each completed batch as it "
        "happens.",
        f"- Noise floor: {floor.get('repeats', '?')} fresh solo runs per model and batch size "
        f"({', '.join(map(str, floor.get('batch_sizes', [])))}) after warm-up, each predicted "
        "by the median of its group; mean relative error.",
        _colocation_method(results),
        f"- Quantile: p{round(config.quantile * 100)}, calibrated online from recent "
        "relative residuals.",
        "- Other CPU: the share of all CPU time on the machine that processes other than "
        "this one used, from the kernel's CPU counters, every 0.5 s while a trace runs. "
        "It is interference no predictor sees.",
        f"- Timings: {shown}." if shown else "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _colocation_method(results: dict[str, Any]) -> str | None:
    floor = results.get("colocation_floor")
    if not floor:
        return None
    scenarios = floor.get("scenarios", [])
    ks = sorted({s["k"] for s in scenarios})
    spread = floor.get("mean_start_spread_ms")
    started = "" if spread is None else f" (their starts {num(spread)} ms apart on average)"
    return (
        f"- Co-location noise floor: {len(scenarios)} co-locations of K = "
        f"{', '.join(map(str, ks))} batches, (model, batch size) drawn from the profiled ones; "
        f"each batch on its own slot, all submitted together{started}, "
        f"{floor.get('repeats', '?')} times in a row after {floor.get('warmup', '?')} warm-up "
        "round(s). Each batch's latency is predicted by the median of its repeats in the same "
        "co-location; mean relative error. With more threads than cores, how the operating "
        "system time-slices them differs from run to run: that spread is beyond any predictor."
    )


def write_outputs(
    out_dir: Path,
    results: dict[str, Any],
    grid: GridEvaluation,
    shift: ShiftEvaluation | None,
    config: StudyConfig,
) -> dict[str, str]:
    """Plots, then report.md, then results.json (NaN written as null)."""
    started = time.perf_counter()
    plots = write_plots(out_dir, results, grid, shift, config)
    timings = results.setdefault("timings", {})
    timings["plots_s"] = time.perf_counter() - started
    if "total_s" in timings:
        timings["total_s"] += timings["plots_s"]
    results["plots"] = plots
    clean = to_jsonable(results)
    (out_dir / "report.md").write_text(render_report(clean, plots, config))
    write_json(out_dir / "results.json", clean)
    return plots


def _floor_row(label: str, kind: str, floor: dict[str, Any]) -> list[Any]:
    """A noise floor as a row of the comparison table (no bias or quantile columns)."""
    return [
        label,
        kind,
        pct(floor.get("mean_rel_err")),
        pct(floor.get("p50")),
        pct(floor.get("p95")),
        pct(floor.get("p99")),
        "-",
        "-",
        floor.get("samples", 0),
        "-",
    ]
