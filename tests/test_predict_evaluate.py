"""Evaluation in posterior and forecast mode on simulated traces; error summaries."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from predlat.predict import (
    Prediction,
    error_summary,
    evaluate_forecast,
    evaluate_posterior,
    make_predictor,
)
from predlat.predict.synthetic import SlowdownLaw, simulate_trace, synthetic_profile
from predlat.traces.records import attach_timelines

PROFILE = synthetic_profile(seed=0)
LAW = SlowdownLaw()


@pytest.fixture(scope="module")
def trace():
    return simulate_trace(PROFILE, LAW, slots=3, load=0.8, num_batches=1200, seed=1, noise_cv=0.03)


def test_one_prediction_per_record_in_both_modes(trace):
    train, test = trace[:800], trace[800:]
    p = make_predictor("fine-rls", PROFILE).fit(train)
    weights = list(p.regressor.coef)
    posterior = evaluate_posterior(p, test)
    assert p.regressor.coef != weights  # online: learnt from every batch
    forecast = evaluate_forecast(make_predictor("fine-rls", PROFILE).fit(train), PROFILE, test)
    by_id = {r.batch_id: r for r in test}
    for preds in (posterior, forecast):
        assert sorted(x.batch_id for x in preds) == sorted(by_id)
        for x in preds:
            rec = by_id[x.batch_id]
            assert (x.model, x.batch_size, x.time) == (rec.model, rec.batch_size, rec.start)
            assert x.actual == pytest.approx(rec.latency)
            assert 0 < x.predicted <= x.predicted_q
    times = [x.time for x in forecast]
    assert times == sorted(times)


def test_forecasts_never_use_the_future(trace):
    """Changing every batch that starts after T changes no forecast made before T."""
    train, test = trace[:800], trace[800:]
    cut = sorted(r.start for r in test)[200]
    ids = {r.batch_id for r in test}
    changed = [
        r
        for r in attach_timelines(
            [
                replace(r, end=r.start + 3.0 * r.latency, timeline=()) if r.start > cut else r
                for r in trace
            ]
        )
        if r.batch_id in ids
    ]
    runs = []
    for records in (test, changed):
        p = make_predictor("fine-rls", PROFILE).fit(train)
        runs.append({x.batch_id: x for x in evaluate_forecast(p, PROFILE, records)})
    early = [i for i, x in runs[0].items() if x.time <= cut]
    assert len(early) > 150
    for i in early:
        assert runs[1][i].predicted == runs[0][i].predicted
        assert runs[1][i].predicted_q == runs[0][i].predicted_q
    later = [i for i, x in runs[0].items() if x.time > cut + 0.05]
    assert any(runs[1][i].predicted != runs[0][i].predicted for i in later)


def test_fine_adaptive_beats_coarse_and_quantiles_are_calibrated(trace):
    train, test = trace[:800], trace[800:]
    summary = {}
    for name in ("solo", "coarse", "fine", "fine-rls"):
        p = make_predictor(name, PROFILE).fit(train)
        summary[name] = error_summary(evaluate_forecast(p, PROFILE, test))
        summary[name + "-posterior"] = error_summary(
            evaluate_posterior(make_predictor(name, PROFILE).fit(train), test)
        )
    err = {k: v["mean_rel_err"] for k, v in summary.items()}
    # Forecast mode: both interference-aware views beat solo by far (on this trace fine-rls
    # and coarse are within 10% of each other: the future co-location dominates).
    assert max(err["fine-rls"], err["coarse"]) < 0.75 * err["solo"]
    assert err["fine-rls-posterior"] < 0.05
    assert err["fine-posterior"] < err["coarse-posterior"]
    for name in ("coarse", "fine", "fine-rls"):
        assert 0.02 <= summary[name]["q95_exceed_frac"] <= 0.10, (name, summary[name])


def test_error_summary_on_a_hand_made_example():
    rows = [(1.0, 1.1, 1.2), (2.0, 1.8, 1.9), (4.0, 4.0, 5.0), (1.0, 0.5, 0.9)]
    preds = [Prediction(i, "m", 1, a, p, q, float(i)) for i, (a, p, q) in enumerate(rows)]
    s = error_summary(preds)
    assert s["n"] == 4
    assert s["mean_rel_err"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.5) / 4)
    assert s["p50"] == pytest.approx(0.1)
    assert s["p95"] == pytest.approx(0.1 + 0.85 * 0.4)  # linear interpolation
    assert s["p99"] == pytest.approx(0.1 + 0.97 * 0.4)
    assert s["under_frac"] == 0.5
    assert s["q95_exceed_frac"] == 0.5
    assert preds[3].rel_err == pytest.approx(0.5)


def test_error_summary_of_nothing():
    s = error_summary([])
    assert s["n"] == 0 and all(math.isnan(v) for k, v in s.items() if k != "n")
