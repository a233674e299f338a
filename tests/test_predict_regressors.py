"""Regressors on known linear targets; quantile calibration."""

from __future__ import annotations

import numpy as np
import pytest

from predlat.predict.calibration import Calibrator
from predlat.predict.regressors import RLS, SGD, Ridge, _clip_top, _positive_definite, top_up
from predlat.predict.small_eigh import small_eigh


def linear_data(n: int, w: np.ndarray, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.uniform(0, 2, size=(n, len(w) - 1))])
    y = X @ w + noise * rng.standard_normal(n)
    return X, y


W = np.array([1.0, 0.3, -0.2, 0.5, 0.05, 0.8])


def test_ridge_recovers_noise_free_weights():
    X, y = linear_data(200, W)
    model = Ridge(len(W), alpha=0.0).fit(X, y)
    assert np.allclose(model.w, W, atol=1e-8)
    assert model.predict_one(X[3].tolist()) == pytest.approx(y[3])
    version = model.version
    model.learn_one(X[0], 100.0)  # static: ignores updates
    assert model.version == version


def test_rls_converges_on_noise_free_target():
    X, y = linear_data(400, W, seed=1)
    model = RLS(len(W), lam=1.0, delta=1e6)
    for xi, yi in zip(X, y, strict=True):
        model.learn_one(xi.tolist(), float(yi))
    assert np.max(np.abs(model.w - W)) < 1e-6


def test_rls_with_forgetting_tracks_a_target_that_changes_halfway():
    W2 = W + np.array([0.5, -0.3, 0.4, 0.0, 0.2, -0.6])
    X1, y1 = linear_data(500, W, seed=2)
    X2, y2 = linear_data(500, W2, seed=3)
    forgetful, rigid = RLS(len(W), lam=0.97), RLS(len(W), lam=1.0)
    for X, y in ((X1, y1), (X2, y2)):
        for xi, yi in zip(X, y, strict=True):
            forgetful.learn_one(xi, float(yi))
            rigid.learn_one(xi, float(yi))
    assert np.max(np.abs(forgetful.w - W2)) < 1e-4
    assert np.max(np.abs(rigid.w - W2)) > 0.05  # without forgetting it averages both


def test_rls_guard_against_windup_without_excitation():
    model = RLS(3, lam=0.95, delta=10.0)
    x = [1.0, 0.5, 0.0]  # never excites the last two directions independently
    for _ in range(5000):
        model.learn_one(x, 2.0)
    assert np.all(np.isfinite(model.P))
    assert np.linalg.eigvalsh(model.P).max() <= 10.0 / 0.95**32  # clipped every 32 updates
    assert model.predict_one(x) == pytest.approx(2.0, abs=1e-9)
    # Still learns at full speed in the excited direction.
    for _ in range(200):
        model.learn_one(x, 3.0)
    assert model.predict_one(x) == pytest.approx(3.0, abs=1e-3)


def test_rls_fit_then_online():
    X, y = linear_data(300, W, seed=4)
    model = RLS(len(W), lam=0.99).fit(X, y)
    assert np.allclose(model.w, W, atol=1e-3)
    model.learn_one(X[0], float(y[0]))
    assert np.allclose(model.w, W, atol=1e-3)


def test_sgd_converges_from_scratch():
    lr, steps, tol = 0.5, 4000, 1e-4
    X, y = linear_data(steps, W, seed=5)
    model = SGD(len(W), lr=lr)
    for xi, yi in zip(X, y, strict=True):
        model.learn_one(xi, float(yi))
    assert np.max(np.abs(model.w - W)) < tol


def test_sgd_fit_warm_starts_from_least_squares():
    X, y = linear_data(100, W, seed=6)
    assert np.allclose(SGD(len(W)).fit(X, y).w, W, atol=1e-3)
    cold = SGD(len(W), lr=0.5, warm_start=False).fit(X, y)
    assert np.max(np.abs(cold.w - W)) < 0.5  # some progress from 100 samples


def test_calibrator_conformal_rank_and_fallback():
    cal = Calibrator(window=100, default_margin=0.3, min_count=5)
    assert cal.quantile(0.95) == 0.3
    for r in np.linspace(-0.1, 0.89, 100):
        cal.add(float(r))
    # ceil(101 * 0.95) = 96th smallest of -0.1, -0.09, ..., 0.89
    assert cal.quantile(0.95) == pytest.approx(-0.1 + 0.01 * 95)
    assert cal.quantile(0.5) == pytest.approx(-0.1 + 0.01 * 50)
    for _ in range(100):
        cal.add(-0.5)  # the window slides; margins are never negative
    assert cal.quantile(0.95) == 0.0
    cal.add(float("nan"))
    assert len(cal) == 100


def test_calibrated_quantile_on_a_noisy_stream_exceeds_about_five_percent():
    rng = np.random.default_rng(7)
    cal = Calibrator(window=256)
    exceed = total = 0
    for i in range(4000):
        predicted = 1.0 + rng.uniform()
        actual = predicted * (1.0 + 0.2 * rng.standard_normal()) + (0.3 if i > 2000 else 0.0)
        if i >= 300:
            total += 1
            exceed += actual > predicted * (1 + cal.quantile(0.95))
        cal.add(actual / predicted - 1.0)
    assert 0.02 <= exceed / total <= 0.10


def test_rls_clips_outliers_but_follows_a_shift():
    rng = np.random.default_rng(7)
    X, y = linear_data(400, W, seed=8)
    robust = RLS(len(W), lam=0.99, huber=3.0).fit(X, y)
    plain = RLS(len(W), lam=0.99).fit(X, y)
    # Isolated outliers (a co-tenant's burst): ten times the target, one in twenty.
    for i in range(400):
        x = rng.normal(size=len(W))
        target = float(x @ W) + (10.0 * abs(float(x @ W)) + 5.0 if i % 20 == 0 else 0.0)
        robust.learn_one(x, target)
        plain.learn_one(x, target)
    err = lambda m: float(np.max(np.abs(m.w - W)))  # noqa: E731
    assert err(robust) < 0.5 * err(plain)
    # A lasting shift of the law is learned all the same.
    W2 = W + 1.0
    for _ in range(600):
        x = rng.normal(size=len(W))
        robust.learn_one(x, float(x @ W2))
    assert np.allclose(robust.w, W2, atol=0.05)
    with pytest.raises(ValueError, match="huber"):
        RLS(3, huber=-1.0)


def test_rls_guard_clips_like_an_eigendecomposition():
    # The guard finds the eigenvalues past its bound by powers of P; it must clip them
    # as the eigendecomposition would (to rounding), or leave the case to it.
    rng = np.random.default_rng(3)
    model = RLS(8, delta=100.0)
    fast = 0
    for grown in (0, 1, 2, 2):
        q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
        eig = np.concatenate([[250.0, 120.0][:grown], 10 ** rng.uniform(-4, 1.0, 8 - grown)])
        P = (q * eig) @ q.T
        vals, vecs = np.linalg.eigh(0.5 * (P + P.T))
        expected = (vecs * np.clip(vals, 1e-12, 100.0)) @ vecs.T
        assert np.allclose(model._guard(P), expected, rtol=0, atol=1e-12)
        fast += _clip_top(0.5 * (P + P.T), P.tolist(), 100.0) is not None
    assert fast == 4
    broken = np.full((8, 8), np.nan)
    assert np.array_equal(model._guard(broken), np.eye(8) * 100.0)


def test_positive_definite_check_of_the_guard():
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(8, 8)))
    for eig, expected in (
        (np.linspace(1e-4, 100.0, 8), True),
        (np.concatenate([[-1e-3], np.ones(7)]), False),  # one negative eigenvalue
    ):
        M = (q * eig) @ q.T
        assert _positive_definite((0.5 * (M + M.T)).tolist()) is expected
    assert not _positive_definite(np.zeros((8, 8)).tolist())  # singular


def _collinear_setup(prior: float):
    """RLS fitted where the co-runner count varies (0..2), then fed a full-load stream
    whose count is about 1 on every batch: intercept and count become collinear."""
    rng = np.random.default_rng(0)
    c = rng.integers(0, 3, 400).astype(float)
    X = np.c_[np.ones(400), c, rng.uniform(0.5, 1.5, 400)]
    w_true = np.array([0.8, 0.4, 0.2])
    reg = RLS(3, lam=0.99, prior=prior).fit(X, X @ w_true + rng.normal(0, 0.02, 400))
    stream = np.random.default_rng(1)

    def feed(steps: int, shift: float = 0.0) -> None:
        for _ in range(steps):
            x = np.array([1.0, 1.0 + stream.normal(0, 0.02), stream.uniform(0.5, 1.5)])
            reg.learn_one(x, float(x @ w_true) + shift + stream.normal(0, 0.02))

    return reg, feed


UNEXCITED = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)  # intercept up, count down


@pytest.mark.parametrize("prior", [0.0, 1.0])
def test_rls_prior_keeps_fitted_weights_along_an_unexcited_direction(prior):
    reg, feed = _collinear_setup(prior)
    fitted = reg.w_prior.copy()
    feed(1000)  # the information along UNEXCITED is forgotten
    feed(30, shift=0.6)  # a burst of slow batches
    feed(30)
    drift = abs(float(UNEXCITED @ (reg.w - fitted)))
    if prior:
        assert drift < 0.05
    else:  # what the prior prevents: the burst's noise moved the weights along it
        assert drift > 0.2


def test_rls_prior_still_learns_a_shift_in_an_excited_direction():
    reg, feed = _collinear_setup(1.0)
    feed(500)
    feed(300, shift=0.3)
    x = [1.0, 1.0, 1.0]
    assert reg.predict_one(x) == pytest.approx(1.4 + 0.3, abs=0.03)


def test_rls_prior_is_a_guard_too():
    reg = RLS(2, lam=0.9, delta=100.0, prior=1.0, check_every=8)
    reg.fit([[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0])
    for _ in range(200):  # only the first direction excited: P must stay bounded there
        reg.learn_one([1.0, 0.0], 1.0)
    assert np.linalg.eigvalsh(reg.P).max() <= 1.0 + 1e-9
    assert reg.w[1] == pytest.approx(2.0, abs=1e-4)  # (the fit, held)


@pytest.mark.parametrize("prior", [0.0, 1.0])
def test_rls_mends_a_broken_covariance(prior):
    rls = RLS(3, prior=prior).fit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [1, 2, 3])
    rls.P[0, 0] = np.nan  # what overflow or a bad sample can leave behind
    rls.learn_one([1.0, 0.0, 0.0], 1.0)
    assert np.isfinite(rls.P).all()
    for _ in range(50):
        rls.learn_one([1.0, 1.0, 0.0], 4.0)
    assert rls.predict_one([1.0, 1.0, 0.0]) == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 12])
def test_small_eigh_decomposes_as_numpy_does(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n))
    p = a @ a.T + 1e-3 * np.eye(n)
    ref_mu, ref_vec = np.linalg.eigh(p)
    for basis in (np.eye(n), ref_vec, np.linalg.qr(rng.normal(size=(n, n)))[0]):
        mu, vec = small_eigh(p, basis)
        assert mu == pytest.approx(ref_mu, rel=1e-10, abs=1e-14)
        assert np.allclose((vec * mu) @ vec.T, p, rtol=0, atol=1e-12 * np.abs(p).max())
        assert np.allclose(vec.T @ vec, np.eye(n), rtol=0, atol=1e-13)


def test_small_eigh_of_a_diagonal_and_of_a_broken_matrix():
    mu, vec = small_eigh(np.diag([3.0, 1.0, 2.0]), np.eye(3))
    assert mu.tolist() == [1.0, 2.0, 3.0] and (np.abs(vec) == np.eye(3)[:, [1, 2, 0]]).all()
    mu, _ = small_eigh(np.full((2, 2), np.nan), np.eye(2))  # no rotation: NaN out, no hang
    assert np.isnan(mu).all()


def test_top_up_raises_the_weakest_information_to_the_prior():
    """The top-up against its definition, written out with numpy: information A' = A
    with eigenvalues raised to at least the prior, w' = A'^-1 (A w + (A' - A) w_prior)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    P = a @ a.T
    P[:, 0] *= 50.0  # one direction badly informed
    P[0, :] *= 50.0
    w, w_prior = rng.normal(size=4), rng.normal(size=4)
    P2, w2, basis = top_up(P, w, w_prior, 0.5, 1e6, np.eye(4))
    A = np.linalg.inv(P)
    mu, vec = np.linalg.eigh(A)
    A2 = (vec * np.maximum(mu, 0.5)) @ vec.T
    assert np.allclose(P2, np.linalg.inv(A2), rtol=1e-9, atol=1e-12)
    assert np.allclose(w2, np.linalg.solve(A2, A @ w + (A2 - A) @ w_prior), rtol=1e-8)
    assert np.allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    # A well-informed posterior is left as it is.
    P3, w3, _ = top_up(np.eye(4) * 0.1, w, w_prior, 0.5, 1e6, np.eye(4))
    assert np.array_equal(P3, np.eye(4) * 0.1) and np.array_equal(w3, w)
