"""report.md of the study, rendered from its typed results. It states what this run
computed and nothing else."""

from __future__ import annotations

import math

from .floors import FloorSummary
from .report import md_table, num, pct
from .study_eval import POSTERIOR_SUFFIX, STAT_KEYS, ErrorStats
from .study_results import RegimeResult, StudyResults
from .study_shift import FACTOR_LABELS

HEADLINE = ("fine-rls", "coarse")  # the paper's comparison: fine-grained adaptive vs gpulet


def render_report(results: StudyResults) -> str:
    parts = [
        "# predlat study: latency prediction under co-location",
        _answer(results),
        *(_regime(results, r) for r in results.regimes.values()),
        _shift(results),
        _per_trace(results),
        _method(results),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def _err(stats: dict[str, ErrorStats], name: str) -> float | None:
    s = stats.get(name)
    return None if s is None or not s.batches else s.mean_rel_err


def _answer(results: StudyResults) -> str:
    lines = ["## Answer", ""]
    for regime in results.regimes.values():
        lines += [f"- **{regime.name} regime** (K = {', '.join(map(str, regime.ks))}):"]
        lines += [f"  - {line}" for line in _regime_findings(regime)]
    for factor, shift in results.shifts.items():
        shown = ", ".join(
            f"{n} {'never' if s.recovery_batches is None else s.recovery_batches}"
            for n, s in shift.predictors.items()
            if s.online
        )
        if shown:
            lines.append(
                f"- Shift in {FACTOR_LABELS[factor]} ({shift.before.name} -> "
                f"{shift.after.name}): recovery batches of the adaptive predictors: {shown}."
            )
    foreign = results.foreign_cpu()
    if foreign["traces_mean"] is not None:
        lines.append(
            f"- Other processes used on average {pct(foreign['traces_mean'], 0)} of this "
            f"machine's CPU while the traces ran (up to {pct(foreign['traces_max'], 0)}): "
            "interference no predictor sees, included in every error here."
        )
    return "\n".join(lines)


def _regime_findings(regime: RegimeResult) -> list[str]:
    e = regime.evaluation
    rls, coarse = (_err(e.predictors, n) for n in HEADLINE)
    out = []
    ratio = _ratio(rls, coarse)
    if ratio is not None:
        out.append(
            f"{HEADLINE[0]} (forecast mode) {pct(rls)}, {HEADLINE[1]} {pct(coarse)}: "
            f"ratio {ratio:.2f}."
        )
    floor = regime.colocation_floor.mean_rel_err if regime.colocation_floor else None
    post = _err(e.predictors, HEADLINE[0] + POSTERIOR_SUFFIX)
    if _ratio(post, floor) is not None:
        out.append(
            f"{HEADLINE[0]}{POSTERIOR_SUFFIX} {pct(post)} against a co-location floor of "
            f"{pct(floor)}: ratio {_ratio(post, floor):.2f}."
        )
    unseen = _err(e.unseen, HEADLINE[0])
    if _ratio(unseen, rls) is not None:
        out.append(
            f"{HEADLINE[0]} on unseen configurations {pct(unseen)} vs {pct(rls)} "
            f"in-distribution: ratio {_ratio(unseen, rls):.2f}."
        )
    forecast = {n: s for n, s in e.predictors.items() if not n.endswith(POSTERIOR_SUFFIX)}
    if forecast:
        best = min(forecast, key=lambda n: forecast[n].mean_rel_err)
        out.append(f"lowest forecast-mode error: {best} ({pct(forecast[best].mean_rel_err)}).")
    out.append(f"{e.test_batches} test batches from {len(e.traces)} traces.")
    return out


def _regime(results: StudyResults, regime: RegimeResult) -> str:
    e = regime.evaluation
    names = sorted(
        e.predictors,
        key=lambda n: (n.endswith(POSTERIOR_SUFFIX), e.predictors[n].mean_rel_err),
    )
    rows = []
    for name in names:
        s = e.predictors[name]
        unseen = e.unseen.get(name)
        rows.append(
            [
                name,
                "posterior" if name.endswith(POSTERIOR_SUFFIX) else "forecast",
                *(pct(getattr(s, k)) for k in STAT_KEYS),
                s.batches,
                pct(unseen.mean_rel_err) if unseen and unseen.batches else "-",
            ]
        )
    if results.noise_floor is not None:
        rows.append(_floor_row("noise floor (solo)", results.noise_floor))
    if regime.colocation_floor is not None:
        rows.append(_floor_row("co-location floor", regime.colocation_floor))
    headers = ["predictor", "mode", "mean", "p50", "p95", "p99", "under", ">q", "batches"]
    text = [
        f"## {regime.name.capitalize()} regime",
        "",
        f"Traces: {', '.join(t.name for t in e.traces)}. {e.train_batches} batches trained "
        f"on, {e.test_batches} tested. under: share predicted faster than they ran; >q: "
        "share that ran longer than the predicted quantile. unseen: the same test batches, "
        "predicted after fitting on every other configuration only.",
        "",
        md_table([*headers, "unseen"], rows, "ll" + "r" * 8),
        "",
        _per_k(regime),
    ]
    key = f"cdf_{regime.name}"
    if key in results.plots:
        text += ["", f"![error CDF]({results.plots[key]})"]
    return "\n".join(text)


def _per_k(regime: RegimeResult) -> str:
    e = regime.evaluation
    names = [n for n in e.predictors if not n.endswith(POSTERIOR_SUFFIX)]
    floor = regime.colocation_floor.per_group if regime.colocation_floor else {}
    counts = e.batches_per_k()
    rows = [
        [
            k,
            counts.get(k, 0),
            pct(floor.get(str(k))),
            *(pct(e.predictors[n].per_k.get(k)) for n in names),
        ]
        for k in regime.ks
    ]
    return "Per K (forecast mode, mean relative error):\n\n" + md_table(
        ["K", "test batches", "co-location floor", *names], rows
    )


def _floor_row(label: str, floor: FloorSummary) -> list[object]:
    return [
        label,
        "repeats (leave-one-out)",
        *(pct(v) for v in (floor.mean_rel_err, floor.p50, floor.p95, floor.p99)),
        "-",
        "-",
        floor.samples or "-",
        "-",
    ]


def _shift(results: StudyResults) -> str:
    if not results.shifts:
        return ""
    c = results.evaluation
    text = [
        "## Shift: one factor at a time",
        "",
        f"Each predictor is fitted on the first {c.train_frac:.0%} of the `before` trace, then "
        "streams (forecast mode, learning online where it can) the rest of it and the whole "
        "`after` trace. Achievable: the same kind of predictor fitted on the first part of "
        "`after` alone and tested on its rest. Recovery: batches after the shift until the "
        f"rolling error ({c.window} batches) is at most {c.recovery_factor} x achievable and "
        "stays so for a full window; 'never' if that does not happen before the stream ends.",
    ]
    for factor, shift in results.shifts.items():
        rows = [
            [
                n,
                "yes" if s.online else "no",
                pct(s.before_mean_rel_err),
                pct(s.after_mean_rel_err),
                pct(s.after_last_window_mean_rel_err),
                pct(s.achievable_rel_err),
                "never" if s.recovery_batches is None else s.recovery_batches,
            ]
            for n, s in shift.predictors.items()
        ]
        text += [
            "",
            f"### {FACTOR_LABELS[factor]}: {shift.before.name} -> {shift.after.name}",
            "",
            md_table(
                ["predictor", "online", "before", "after", "last window", "achievable", "recovery"],
                rows,
                "llrrrrr",
            ),
        ]
        if f"shift_{factor}" in results.plots:
            text += ["", f"![shift in {factor}]({results.plots[f'shift_{factor}']})"]
    return "\n".join(text)


def _per_trace(results: StudyResults) -> str:
    names = [n for n in results.evaluation.predictors]
    rows = [
        [
            t["name"],
            t["regime"],
            t["concurrency"],
            f"{t['load']:.2f}",
            t["batches"],
            num(t["mean_concurrency"]),
            num(t["mean_slowdown"], suffix="x"),
            pct(t["foreign_cpu_frac"], 0),
            *(pct(t["mean_rel_err"].get(n)) for n in names),
        ]
        for t in results.per_trace
    ]
    headers = ["trace", "regime", "K", "load", "batches", "conc", "slowdown", "other CPU"]
    return "\n".join(
        [
            "## Per trace (forecast mode, mean relative error on its test part)",
            "",
            md_table([*headers, *names], rows, "ll" + "r" * (len(headers) + len(names) - 2)),
        ]
    )


def _method(results: StudyResults) -> str:
    m, c = results.machine, results.evaluation
    shown = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in results.timings.items())
    lines = [
        "## Method",
        "",
        f"- Source: {results.source}. Machine: {m.cpu}, {m.cores} cores, {m.provider}, "
        f"{m.intra_op_threads} thread(s) per slot. Regime: spatial when K x threads <= cores, "
        "oversubscribed otherwise; accelerator on a non-CPU device.",
        f"- Split: first {c.train_frac:.0%} of each trace's batches by start time to train, the "
        "rest to test; each predictor fitted once per regime on its training parts pooled; "
        "each test part evaluated from a copy of that fit (online predictors keep learning).",
        "- Unseen configurations: leave one trace out, fit on the others' training parts.",
        "- Noise floor: repeated solo runs of each (model, batch size); co-location floor: one "
        "seeded trace-like schedule per K replayed; every sample scored against the median of "
        "the other repeats (leave-one-out).",
        f"- Quantile: p{round(c.quantile * 100)}.",
        f"- Timings: {shown}." if shown else "",
    ]
    if results.noise_floor is not None:
        info = results.noise_floor.info
        lines.append(f"- Noise floor repeats: {info.get('repeats', '?')} per (model, size).")
    if results.colocation_floor is not None:
        info = results.colocation_floor.info
        lines.append(
            f"- Co-location floor: {info.get('repeats', '?')} replays after "
            f"{info.get('warmup', '?')} warm-up, {info.get('batches_per_schedule', '?')} "
            "batches per schedule."
        )
    return "\n".join(line for line in lines if line)
