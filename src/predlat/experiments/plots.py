"""Plot helpers shared by experiments: PNG files via matplotlib's non-interactive backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
import numpy as np


def cdf_plot(
    samples: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    vlines: Mapping[str, float] | None = None,
    xmax_quantile: float = 0.99,
    log_x: bool = False,
) -> Path:
    """Empirical CDF of each named sample on one axis; `vlines` marks reference values
    (e.g. a noise floor). The x axis stops at the largest `xmax_quantile` so one heavy
    tail does not squash every curve."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    upper = 0.0
    for name, values in samples.items():
        x = np.sort(np.asarray(values, dtype=float))
        if x.size == 0:
            continue
        y = np.arange(1, x.size + 1) / x.size
        ax.step(x, y, where="post", label=name, linewidth=1.4)
        upper = max(upper, float(np.quantile(x, xmax_quantile)))
    for name, value in (vlines or {}).items():
        ax.axvline(value, color="black", linestyle="--", linewidth=1.0)
        ax.text(value, 0.02, f" {name}", rotation=90, va="bottom", fontsize=8)
    if log_x:
        ax.set_xscale("log")
    elif upper > 0:
        ax.set_xlim(0, upper * 1.05)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of batches")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def series_plot(
    series: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    vline: float | None = None,
    vline_label: str = "",
    ymax_quantile: float = 0.98,
    background: Sequence[float | None] | None = None,
    background_label: str = "",
) -> Path:
    """Lines over a shared index (e.g. rolling error per batch), an optional marker, and
    an optional shaded background series in [0, 1] on a right-hand axis."""
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    if background is not None and any(v is not None for v in background):
        right = ax.twinx()
        y = np.array([np.nan if v is None else v for v in background], dtype=float)
        right.fill_between(np.arange(y.size), 0, y, color="0.85", step="mid", linewidth=0)
        right.set_ylim(0, 1)
        right.set_ylabel(background_label)
        ax.set_zorder(right.get_zorder() + 1)  # lines above the shading
        ax.patch.set_visible(False)
    upper = 0.0
    for name, values in series.items():
        y = np.asarray(values, dtype=float)
        if y.size == 0:
            continue
        ax.plot(np.arange(y.size), y, label=name, linewidth=1.3)
        finite = y[np.isfinite(y)]
        if finite.size:
            upper = max(upper, float(np.quantile(finite, ymax_quantile)))
    if vline is not None:
        ax.axvline(vline, color="black", linestyle="--", linewidth=1.0)
        if vline_label:
            # y in axes units: in data units, read before the final ylim, an outlier
            # could put the label far outside the axes and collapse the layout.
            ax.text(
                vline, 0.95, f" {vline_label}", va="top", fontsize=8,
                transform=ax.get_xaxis_transform(),
            )  # fmt: skip
    if upper > 0:
        ax.set_ylim(0, upper * 1.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=5)
    return _save(fig, path)


def grouped_bars(
    values: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    title: str,
    ylabel: str,
    hline: float | None = None,
    hline_label: str = "",
) -> Path:
    """Bars grouped by the inner keys (e.g. models), one colour per outer key
    (e.g. predictor)."""
    series = list(values)
    groups = sorted({g for inner in values.values() for g in inner})
    fig, ax = plt.subplots(figsize=(max(8.5, 1.2 * len(groups) + 3), 4.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, name in enumerate(series):
        heights = [values[name].get(g, np.nan) for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
    if hline is not None:
        ax.axhline(hline, color="black", linestyle="--", linewidth=1.0, label=hline_label or None)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
