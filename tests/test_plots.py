"""The shared plot helpers lay out cleanly whatever the data."""

from __future__ import annotations

import warnings

from predlat.experiments.plots import series_plot


def test_series_plot_marker_label_stays_inside_with_an_outlier(tmp_path):
    # One huge value: the y-axis is cut at a quantile, so a label placed in data units
    # before the cut would sit far above the axes and break the layout (a warning, and
    # a squashed plot).
    values = [0.1] * 200 + [1e6] + [0.1] * 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = series_plot(
            {"a": values, "b": [0.2] * 401},
            tmp_path / "shift.png",
            title="t",
            xlabel="x",
            ylabel="y",
            vline=200,
            vline_label="shift",
        )
    assert path.stat().st_size > 0
