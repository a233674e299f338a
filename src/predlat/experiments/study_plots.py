"""The study's figures (PNG), drawn from its typed results."""

from __future__ import annotations

from pathlib import Path

from .plots import cdf_plot, grouped_bars, series_plot
from .study_eval import POSTERIOR_SUFFIX
from .study_results import StudyResults
from .study_shift import FACTOR_LABELS, rolling_mean


def write_plots(out_dir: Path, results: StudyResults) -> dict[str, str]:
    """Every figure of the report; returns {figure: file name}."""
    files: dict[str, str] = {}
    for name, regime in results.regimes.items():
        e = regime.evaluation
        marks = {}
        if results.noise_floor is not None:
            marks["noise floor"] = results.noise_floor.mean_rel_err
        if regime.colocation_floor is not None:
            marks["co-location floor"] = regime.colocation_floor.mean_rel_err
        forecast = {
            n: [p.rel_err for p in e.pooled(n)]
            for n in e.predictions
            if not n.endswith(POSTERIOR_SUFFIX)
        }
        files[f"cdf_{name}"] = cdf_plot(
            forecast,
            out_dir / f"error_cdf_{name}.png",
            title=f"Relative error per predictor ({name} regime, forecast mode)",
            xlabel="|predicted - actual| / actual",
            vlines=marks,
        ).name
        per_k = {n: {f"K={k}": v for k, v in e.predictors[n].per_k.items()} for n in forecast}
        files[f"per_k_{name}"] = grouped_bars(
            per_k,
            out_dir / f"error_per_k_{name}.png",
            title=f"Mean relative error per K ({name} regime, forecast mode)",
            ylabel="mean relative error",
            hline=regime.colocation_floor.mean_rel_err if regime.colocation_floor else None,
            hline_label="co-location floor",
        ).name
    config = results.evaluation
    for factor, shift in results.shifts.items():
        series = {
            n: rolling_mean(s.errors, config.window, config.min_periods)
            for n, s in shift.predictors.items()
        }
        files[f"shift_{factor}"] = series_plot(
            series,
            out_dir / f"shift_{factor}.png",
            title=(
                f"Shift in {FACTOR_LABELS[factor]}: {shift.before.name} -> {shift.after.name} "
                f"(rolling mean of {config.window})"
            ),
            xlabel="batch (start order)",
            ylabel="mean relative error",
            vline=shift.shift_index,
            vline_label="shift",
        ).name
    return files
