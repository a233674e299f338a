"""The predictor family on synthetic batches that follow a known slowdown law."""

from __future__ import annotations

import numpy as np
import pytest

from predlat.errors import ConfigError, PredlatError
from predlat.predict import PREDICTOR_NAMES, Predictor, evaluate_posterior, make_predictor
from predlat.predict.synthetic import SlowdownLaw, law_records, synthetic_profile

PROFILE = synthetic_profile(seed=0)
LAW = SlowdownLaw(count=0.1, compute=0.3, memory=0.15)
LAW_X = SlowdownLaw(count=0.1, compute=0.3, memory=0.1, memory_x=0.2, count_sq=0.05)


def mean_rel_err(predictor, records) -> float:
    return float(np.mean([abs(predictor.predict(r) - r.latency) / r.latency for r in records]))


def test_names_and_protocol():
    assert set(PREDICTOR_NAMES) >= {"solo", "coarse", "ewma", "fine", "fine-sgd", "fine-rls"}
    for name in PREDICTOR_NAMES:
        p = make_predictor(name, PROFILE)
        assert isinstance(p, Predictor) and p.name == name
        assert p.online == ("-sgd" in name or "-rls" in name)


@pytest.mark.parametrize("name", ["fine-lasso", "gpulet", "fine-rls-xm", "coarse-rls"])
def test_unknown_names_and_options_are_user_errors(name):
    with pytest.raises(PredlatError, match="unknown predictor"):
        make_predictor(name, PROFILE)
    with pytest.raises(ConfigError, match="unknown predictor option"):
        make_predictor("fine", PROFILE, forgetting=0.9)
    with pytest.raises(ConfigError, match="forgetting factor"):
        make_predictor("fine-rls", PROFILE, lam=1.5)


def test_fine_family_is_near_exact_and_coarse_is_worse_with_mid_batch_changes():
    train = law_records(PROFILE, LAW, 600, seed=1)
    test = law_records(PROFILE, LAW, 300, seed=2)
    errors = {}
    for name in ("solo", "coarse", "fine", "fine-sgd", "fine-rls"):
        p = make_predictor(name, PROFILE, calibrate_forecast=False).fit(train)
        errors[name] = mean_rel_err(p, test)
    for name in ("fine", "fine-sgd", "fine-rls"):
        assert errors[name] < 1e-4, (name, errors[name])
    assert errors["coarse"] > 0.03
    assert errors["solo"] > errors["coarse"] > 100 * errors["fine"]


def test_time_slicing_is_near_exact_with_the_oversub_channel_only():
    # The synthetic profile is a 2-core machine with 1 thread per batch: with n co-runners
    # the OS time-slices 1 + n threads on 2 cores, slowdown max(1, (1 + n) / 2), averaged
    # over the batch's lifetime. Piecewise in n: no linear function of the count fits it.
    law = SlowdownLaw(base=1.0, count=0.0, compute=0.0, memory=0.0, oversub=1.0)
    train = law_records(PROFILE, law, 600, seed=11, max_co=3)
    test = law_records(PROFILE, law, 300, seed=12, max_co=3)
    for name in ("fine", "fine-rls"):
        errors = {}
        for oversub in (True, False):
            p = make_predictor(name, PROFILE, calibrate_forecast=False, oversub=oversub)
            preds = evaluate_posterior(p.fit(train), test)
            errors[oversub] = float(np.mean([x.rel_err for x in preds]))
        assert errors[True] < 1e-4, (name, errors)
        assert errors[False] > 0.03, (name, errors)


def test_without_mid_batch_changes_coarse_equals_fine():
    train = law_records(PROFILE, LAW, 400, seed=3, mid_batch=False)
    test = law_records(PROFILE, LAW, 200, seed=4, mid_batch=False)
    coarse = make_predictor("coarse", PROFILE, calibrate_forecast=False).fit(train)
    assert mean_rel_err(coarse, test) < 1e-4


def test_cold_start_new_models_predicted_from_profile_features():
    # Trained on three models only; the other three were never seen.
    train = law_records(PROFILE, LAW, 600, seed=7, models=["m0", "m1", "m2"])
    test = law_records(PROFILE, LAW, 300, seed=8, models=["m3", "m4", "m5"])
    fine = make_predictor("fine", PROFILE, calibrate_forecast=False).fit(train)
    assert mean_rel_err(fine, test) < 0.02


def test_online_predictors_adapt_to_a_shift_static_ones_do_not():
    # New models arrive and the device becomes 1.8x as sensitive to co-runners.
    train = law_records(PROFILE, LAW, 600, seed=9, models=["m0", "m1", "m2"])
    shifted = {m: 1.8 for m in PROFILE.models}
    stream = law_records(PROFILE, LAW, 600, seed=10, models=["m3", "m4", "m5"], sensitivity=shifted)
    tail = {}
    for name in ("fine", "fine-sgd", "fine-rls"):
        p = make_predictor(name, PROFILE, calibrate_forecast=False).fit(train)
        preds = evaluate_posterior(p, stream)
        tail[name] = float(np.mean([x.rel_err for x in preds[-200:]]))
    assert tail["fine"] > 0.1
    # Forgetting leaves old data a weight of 0.99^age: the bias decays geometrically.
    assert tail["fine-rls"] < 0.005
    assert tail["fine-sgd"] < 0.02


def test_quantile_is_calibrated_on_a_noisy_stream():
    train = law_records(PROFILE, LAW, 800, seed=11, noise_cv=0.1)
    stream = law_records(PROFILE, LAW, 2000, seed=12, noise_cv=0.1)
    for name in ("solo", "coarse", "fine", "fine-rls"):
        p = make_predictor(name, PROFILE, calibrate_forecast=False).fit(train)
        preds = evaluate_posterior(p, stream, quantile=0.95)
        exceed = np.mean([x.actual > x.predicted_q for x in preds])
        assert 0.02 <= exceed <= 0.10, (name, exceed)
        assert all(x.predicted_q >= x.predicted for x in preds)


def test_quantile_before_any_data_uses_the_default_margin():
    p = make_predictor("fine", PROFILE, default_margin=0.4)
    rec = law_records(PROFILE, LAW, 1, seed=13)[0]
    assert p.predict_quantile(rec, 0.95) == pytest.approx(1.4 * p.predict(rec))


def test_unprofiled_model_is_a_clear_error():
    rec = law_records(PROFILE, LAW, 1, seed=14)[0]
    from dataclasses import replace

    with pytest.raises(PredlatError, match="not in the profile"):
        make_predictor("fine", PROFILE).predict(replace(rec, model="nope"))


def test_static_predictors_do_not_change_their_model_when_learning():
    train = law_records(PROFILE, LAW, 200, seed=15)
    p = make_predictor("fine", PROFILE, calibrate_forecast=False).fit(train)
    weights = list(p.regressor.coef)
    for r in law_records(PROFILE, LAW_X, 50, seed=16):
        p.learn_one(r)
    assert p.regressor.coef == weights
    assert len(p.calibrator) == 200 + 50
