"""Forecast mode: closed-form ends under a known slowdown law, state tracking, no mutation."""

from __future__ import annotations

import copy
import math

import pytest

from predlat.errors import ConfigError
from predlat.predict import Forecaster, RunningBatch, make_predictor
from predlat.predict.colocation import ewma_loads
from predlat.predict.replay import calibrate_forecast
from predlat.predict.synthetic import SlowdownLaw, law_records, synthetic_profile
from predlat.traces.records import BatchRecord, attach_timelines

PROFILE = synthetic_profile(seed=0)
# slowdown = 1 + 0.5 x (number of co-runners): simple enough for closed forms.
LAW = SlowdownLaw(count=0.5, compute=0.0, memory=0.0)
SIZES = sorted(
    (PROFILE.solo_latency(m, n), m, n) for m in PROFILE.models for n in PROFILE.batch_sizes(m)
)
SMALL = SIZES[0][1:]
LARGE = SIZES[-1][1:]


def solo(key) -> float:
    return PROFILE.solo_latency(*key)


@pytest.fixture(scope="module")
def fine():
    train = law_records(PROFILE, LAW, 300, seed=1)
    return make_predictor("fine", PROFILE, calibrate_forecast=False).fit(train)


def batch(i, key, start) -> RunningBatch:
    return RunningBatch(i, key[0], key[1], start)


def pair_root(s: float, shared: float) -> float:
    """Solution of L = s (1 + 0.5 shared / L)."""
    return 0.5 * (s + math.sqrt(s * s + 2.0 * s * shared))


def test_two_identical_batches_started_together(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7)
    fc.on_dispatch(batch(1, SMALL, 0.0))
    ends = fc.forecast(0.0, [batch(2, SMALL, 0.0)])
    assert set(ends) == {1, 2}
    for end in ends.values():
        assert end.mean == pytest.approx(1.5 * solo(SMALL), rel=1e-4)


def test_short_and_long_batch_started_together(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    ends = fc.forecast(0.0, [batch(2, SMALL, 0.0)])
    short = 1.5 * solo(SMALL)  # the long batch is there all the time
    assert ends[2].mean == pytest.approx(short, rel=1e-4)
    assert ends[1].mean == pytest.approx(pair_root(solo(LARGE), short), rel=1e-4)


def test_candidate_arriving_mid_batch_uses_the_running_batch_progress(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    now = 0.3 * solo(LARGE)
    ends = fc.forecast(now, [batch(2, SMALL, now)])
    short = 1.5 * solo(SMALL)
    assert ends[2].mean == pytest.approx(now + short, rel=1e-4)
    assert ends[1].mean == pytest.approx(pair_root(solo(LARGE), short), rel=1e-4)
    assert ends[1].quantile >= ends[1].mean and ends[2].quantile >= ends[2].mean


def test_past_co_location_is_tracked_from_events(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7, correct=False)
    t1, t2 = 0.1 * solo(LARGE), 0.4 * solo(LARGE)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    fc.on_dispatch(batch(2, SMALL, t1))
    assert [b.batch_id for b in fc.running()] == [1, 2]
    done = BatchRecord(2, SMALL[0], SMALL[1], 1, t1, t1, t2)
    fc.on_complete(done)
    assert [b.batch_id for b in fc.running()] == [1]
    ends = fc.forecast(0.5 * solo(LARGE))
    assert ends[1].mean == pytest.approx(pair_root(solo(LARGE), t2 - t1), rel=1e-4)


def snapshot(fc: Forecaster) -> dict:
    state = {
        k: copy.deepcopy(v)
        for k, v in vars(fc).items()
        # (_columns, _parts: caches of the running set, rebuilt at will)
        if k not in ("predictor", "profile", "fmap", "calibrator", "_runs")
        and not k.startswith(("_columns", "_parts"))
    }
    state["runs"] = {i: (r.batch, r.c_start, r.static, r.predicted) for i, r in fc._runs.items()}
    load = state.pop("_state")
    state["load"] = {k: copy.deepcopy(getattr(load, k)) for k in load.__slots__}
    state["residuals"] = fc.calibrator.residuals()
    return state


def test_forecast_does_not_mutate_state(fine):
    fc = Forecaster(fine, PROFILE)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    fc.on_dispatch(batch(2, SMALL, 0.001))
    fc.on_complete(BatchRecord(2, SMALL[0], SMALL[1], 1, 0.001, 0.001, 0.003))
    fc.on_dispatch(batch(5, SMALL, 0.003))
    before = snapshot(fc)
    weights = list(fine.regressor.coef)
    candidates = [batch(3, SMALL, 0.004), batch(4, LARGE, 0.004)]
    first = fc.forecast(0.004, candidates)
    assert snapshot(fc) == before
    assert fine.regressor.coef == weights
    assert fc.forecast(0.004, candidates) == first
    assert set(first) == {1, 3, 4, 5}
    assert [b.batch_id for b in fc.running()] == [1, 5]


def test_empty_device_and_lone_candidate(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7)
    assert fc.forecast(1.0) == {}
    end = fc.forecast(1.0, [batch(7, SMALL, 1.0)])[7]
    assert end.mean == pytest.approx(1.0 + solo(SMALL), rel=1e-4)


def test_overrunning_batch_is_forecast_to_end_after_now(fine):
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-7)
    fc.on_dispatch(batch(1, SMALL, 0.0))
    now = 10 * solo(SMALL)
    end = fc.forecast(now)[1]
    assert now < end.mean <= end.quantile


def test_quantile_uses_forecast_residuals(fine):
    fc = Forecaster(fine, PROFILE, quantile=0.9, fill="none")
    for i in range(50):  # every batch takes 1.2 x its forecast
        t = i * 1.0
        fc.on_dispatch(batch(i, SMALL, t), predicted_latency=solo(SMALL))
        fc.on_complete(BatchRecord(i, SMALL[0], SMALL[1], 0, t, t, t + 1.2 * solo(SMALL)))
    end = fc.forecast(100.0, [batch(99, SMALL, 100.0)])[99]
    assert end.quantile - 100.0 == pytest.approx(1.2 * (end.mean - 100.0), rel=1e-6)


def test_recent_load_fills_freed_slots(fine):
    """After a busy period, a lone candidate is expected to get co-runners again."""
    t_c = 3.0 * solo(SMALL)
    recs = attach_timelines(
        [BatchRecord(i, SMALL[0], SMALL[1], i % 3, 0.0, 0.0, t_c) for i in range(3)]
    )
    forecasts = {}
    for fill in ("none", "revert"):
        fc = Forecaster(fine, PROFILE, fill=fill, adapt_fill=False, learn=False, correct=False)
        for r in recs:
            fc.on_dispatch(batch(r.batch_id, SMALL, 0.0))
        fc.on_dispatch(batch(10, LARGE, 0.0))
        for r in recs:
            fc.on_complete(r)
        forecasts[fill] = fc.forecast(t_c, [batch(11, SMALL, t_c)])
    none, revert = forecasts["none"], forecasts["revert"]
    # Without fill: the large batch is the only co-runner for the candidate's lifetime.
    assert none[11].mean == pytest.approx(t_c + 1.5 * solo(SMALL), rel=1e-3)
    # The recent co-runner count (2) is expected back: more co-location ahead.
    assert revert[11].mean > none[11].mean and revert[10].mean > none[10].mean


def test_coarse_forecast_keeps_each_batch_co_runners_at_start():
    train = law_records(PROFILE, LAW, 300, seed=2, mid_batch=False)
    coarse = make_predictor("coarse", PROFILE, calibrate_forecast=False).fit(train)
    fc = Forecaster(coarse, PROFILE)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    ends = fc.forecast(0.001, [batch(2, SMALL, 0.001), batch(3, SMALL, 0.001)])
    assert ends[1].mean == pytest.approx(solo(LARGE), rel=1e-4)  # alone at its start
    assert ends[2].mean == pytest.approx(0.001 + 2.0 * solo(SMALL), rel=1e-4)  # 2 co-runners


def test_ewma_forecast_tracks_the_load_exactly():
    train = law_records(PROFILE, LAW, 50, seed=3)
    ewma = make_predictor("ewma", PROFILE, calibrate_forecast=False, tau=0.01).fit(train)
    recs = attach_timelines(
        [
            BatchRecord(1, LARGE[0], LARGE[1], 0, 0.0, 0.0, 0.02),
            BatchRecord(2, SMALL[0], SMALL[1], 1, 0.005, 0.005, 0.012),
            BatchRecord(3, SMALL[0], SMALL[1], 1, 0.03, 0.03, 0.031),
        ]
    )
    fc = Forecaster(ewma, PROFILE, learn=False)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    fc.on_dispatch(batch(2, SMALL, 0.005))
    fc.on_complete(recs[0] if recs[0].batch_id == 2 else recs[1])
    fc.on_complete(next(r for r in recs if r.batch_id == 1))
    expected = ewma_loads(recs, ewma.fmap, 0.01)[3]
    assert fc._state.ewma_view(0.03) == pytest.approx(expected, rel=1e-9)


def test_time_slicing_forecast_integrates_the_oversub_channel_exactly():
    """On the synthetic 2-core machine with 1 thread per batch, slowdown
    max(1, (1 + n) / 2): three batches started together time-slice (1.5x) until the
    first ends; then two batches share two cores (1x)."""
    law = SlowdownLaw(base=1.0, count=0.0, compute=0.0, memory=0.0, oversub=1.0)
    train = law_records(PROFILE, law, 400, seed=4, max_co=3)
    fine = make_predictor("fine", PROFILE, calibrate_forecast=False).fit(train)
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-9, correct=False)
    fc.on_dispatch(batch(1, LARGE, 0.0))
    fc.on_dispatch(batch(2, LARGE, 0.0))
    ends = fc.forecast(0.0, [batch(3, SMALL, 0.0)])
    short = 1.5 * solo(SMALL)  # two co-runners all its lifetime: oversub 0.5
    assert ends[3].mean == pytest.approx(short, rel=1e-4)
    # L = s (1 + 0.5 short / L): time-sliced only while the small batch runs.
    for i in (1, 2):
        assert ends[i].mean == pytest.approx(pair_root(solo(LARGE), short), rel=1e-4)
    # Three identical batches: 1.5x all along.
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-9, correct=False)
    fc.on_dispatch(batch(1, SMALL, 0.0))
    fc.on_dispatch(batch(2, SMALL, 0.0))
    ends = fc.forecast(0.0, [batch(3, SMALL, 0.0)])
    assert [e.mean for e in ends.values()] == pytest.approx([short] * 3, rel=1e-4)
    # The same from the past: the small batch has finished, tracked from events.
    fc = Forecaster(fine, PROFILE, fill="none", tol=1e-9, correct=False)
    for i, key in ((1, LARGE), (2, LARGE), (3, SMALL)):
        fc.on_dispatch(batch(i, key, 0.0))
    fc.on_complete(BatchRecord(3, SMALL[0], SMALL[1], 2, 0.0, 0.0, short))
    ends = fc.forecast(short)
    assert [e.mean for e in ends.values()] == pytest.approx(
        [pair_root(solo(LARGE), short)] * 2, rel=1e-4
    )


def test_hinge_integral_of_the_relaxing_fill_matches_quadrature():
    from predlat.predict.sweep import hinge_exp_integral as _hinge_exp_integral

    xs = [0.2 + 1.3 * (k + 0.5) / 200000 for k in range(200000)]
    for a, b in [(-0.5, 1.0), (0.4, -1.0), (0.3, 0.2), (-1.0, 0.5), (-0.2, -0.3)]:
        exact = _hinge_exp_integral(a, b, 0.2, 1.5, math.exp(-0.2), math.exp(-1.5))
        numeric = sum(max(0.0, a + b * math.exp(-x)) for x in xs) * 1.3 / 200000
        assert exact == pytest.approx(numeric, rel=1e-6, abs=1e-9), (a, b)


def test_bad_options_are_config_errors(fine):
    with pytest.raises(ConfigError, match="fill"):
        Forecaster(fine, PROFILE, fill="always")
    with pytest.raises(ConfigError, match="quantile"):
        Forecaster(fine, PROFILE, quantile=1.5)


def _run_biased(fc: Forecaster, factor: float, n: int, lag: float = 0.0) -> float:
    """n batches of LARGE alone, each really `factor` x its solo latency from the device
    start, which is `lag` s after the decision; returns the last forecast latency."""
    t, predicted = 0.0, 0.0
    for i in range(n):
        predicted = fc.forecast(t, [batch(i, LARGE, t)])[i].mean - t
        fc.on_dispatch(batch(i, LARGE, t), predicted)
        start = t + lag
        end = start + factor * solo(LARGE)
        fc.on_complete(BatchRecord(i, LARGE[0], LARGE[1], 0, t, start, end))
        t = end + 1.0
    return predicted


def test_median_correction_removes_a_bias_the_features_cannot_see(fine):
    fc = Forecaster(fine, PROFILE, fill="none", learn=False)
    assert _run_biased(fc, 1.3, 120) == pytest.approx(1.3 * solo(LARGE), rel=0.02)
    plain = Forecaster(fine, PROFILE, fill="none", learn=False, correct=False)
    assert _run_biased(plain, 1.3, 120) == pytest.approx(solo(LARGE), rel=1e-3)


def test_solo_forecasts_stay_uncorrected():
    solo_model = make_predictor("solo", PROFILE, calibrate_forecast=False)
    solo_model.fit(law_records(PROFILE, LAW, 20, seed=5))
    fc = Forecaster(solo_model, PROFILE, learn=False)
    assert _run_biased(fc, 1.3, 60) == pytest.approx(solo(LARGE), rel=1e-6)


def test_forecast_residuals_are_measured_from_the_decision(fine):
    """A batch that runs exactly as forecast but starts `lag` late ends late for the
    scheduler: its residual counts the lag."""
    fc = Forecaster(fine, PROFILE, fill="none", learn=False, correct=False, window=40)
    lag = 0.5 * solo(LARGE)
    _run_biased(fc, 1.0, 40, lag=lag)
    assert fc.calibrator.quantile(0.5) == pytest.approx(0.5, rel=1e-4)


def test_training_replay_hands_its_median_correction_on():
    """Records 1.3 x slower than the law the predictor was fitted on: the training
    replay's correction is where new forecasters start (not the solo view's)."""
    fitted = make_predictor("fine", PROFILE, calibrate_forecast=False)
    fitted.fit(law_records(PROFILE, LAW, 300, seed=1))
    slow = [
        BatchRecord(i, LARGE[0], LARGE[1], 0, t, t, t + 1.3 * solo(LARGE))
        for i, t in enumerate(x * 10.0 * solo(LARGE) for x in range(150))
    ]
    fitted.forecast_prior = calibrate_forecast(fitted, attach_timelines(slow))
    assert fitted.forecast_prior.correction == pytest.approx(1.3, rel=0.03)
    assert Forecaster(fitted, PROFILE).correction == fitted.forecast_prior.correction
    assert Forecaster(fitted, PROFILE, correct=False).correction == 1.0


def test_learning_integrates_each_timeline_once_to_the_same_numbers():
    """The forecaster hands the fine co-load it integrated (for the recent co-location)
    to the predictor: learning ends where integrating twice would, to the bit."""
    train = law_records(PROFILE, LAW, 200, seed=2)
    fitted = make_predictor("fine-rls", PROFILE, calibrate_forecast=False).fit(train)
    shared = Forecaster(copy.deepcopy(fitted), PROFILE)
    twice = Forecaster(copy.deepcopy(fitted), PROFILE)
    twice._shared_load = False
    assert shared._shared_load
    for r in law_records(PROFILE, LAW, 80, seed=3):
        shared.on_complete(r)
        twice.on_complete(r)
    assert shared.predictor.regressor.coef == twice.predictor.regressor.coef
    assert (shared._co_count, shared._co_feat) == (twice._co_count, twice._co_feat)
    assert shared._mean_latency == twice._mean_latency
