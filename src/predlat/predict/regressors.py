"""Linear regressors with one small interface: fit(X, y), predict_one(x), learn_one(x, y).

Rows are short (7 to 20 numbers), so per-call overhead matters more than arithmetic:
weights live in a numpy array for the matrix updates, and a Python-list copy (`coef`) is
kept for the hot predict path, where a plain dot product beats numpy on tiny vectors.
`version` increases whenever the weights change, so callers can cache derived values.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from operator import mul

import numpy as np

from predlat.predict.jit import COMPILED, kernel
from predlat.predict.small_eigh import small_eigh


def _as_2d(X: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(X, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {arr.shape}")
    return arr


def ridge_solve(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with a small ridge penalty scaled to the data (alpha x mean diagonal
    of X'X); returns (weights, regularised X'X)."""
    gram = X.T @ X
    scale = float(np.trace(gram)) / max(gram.shape[0], 1)
    reg = gram + (alpha * scale + 1e-12) * np.eye(gram.shape[0])
    w = np.linalg.solve(reg, X.T @ y)
    return w, reg


class LinearRegressor:
    online = False

    def __init__(self, dim: int):
        self.dim = dim
        self.w = np.zeros(dim)
        self.coef: list[float] = [0.0] * dim
        self.version = 0

    def _set(self, w: np.ndarray) -> None:
        self.w = w
        self.coef = w.tolist()
        self.version += 1

    def predict_one(self, x: Sequence[float]) -> float:
        return sum(map(mul, self.coef, x))

    def fit(self, X, y) -> LinearRegressor:
        raise NotImplementedError

    def learn_one(self, x: Sequence[float], y: float) -> None:
        return None


class Ridge(LinearRegressor):
    """Static least squares (tiny ridge penalty for collinear features); fitted once."""

    def __init__(self, dim: int, alpha: float = 1e-6):
        super().__init__(dim)
        self.alpha = alpha

    def fit(self, X, y) -> Ridge:
        X = _as_2d(X)
        if len(X):
            w, _ = ridge_solve(X, np.asarray(y, dtype=float), self.alpha)
            self._set(w)
        return self


class SGD(LinearRegressor):
    """Online normalised least mean squares: w += lr * e * x / (eps + |x|^2), stable for
    any lr in (0, 2) whatever the feature scale. `fit` starts from the least-squares
    solution (warm start) unless warm_start=False."""

    online = True

    def __init__(self, dim: int, lr: float = 0.2, alpha: float = 1e-6, warm_start: bool = True):
        super().__init__(dim)
        self.lr, self.alpha, self.warm_start = lr, alpha, warm_start

    def fit(self, X, y) -> SGD:
        X = _as_2d(X)
        y = np.asarray(y, dtype=float)
        if self.warm_start and len(X):
            w, _ = ridge_solve(X, y, self.alpha)
            self._set(w)
        else:
            for xi, yi in zip(X, y, strict=True):
                self.learn_one(xi, float(yi))
        return self

    def learn_one(self, x: Sequence[float], y: float) -> None:
        xa = np.asarray(x, dtype=float)
        e = y - float(self.w @ xa)
        self._set(self.w + (self.lr * e / (1e-9 + float(xa @ xa))) * xa)


class RLS(LinearRegressor):
    """Recursive least squares with forgetting factor lam (memory ~ 1 / (1 - lam) samples).

    Guards: P is re-symmetrised and its eigenvalues are clipped to at most `delta` (the
    prior's uncertainty) every `check_every` updates. Forgetting without fresh excitation
    (say, one model for a long while) would otherwise grow P without bound in the
    unexcited directions (covariance wind-up); clipping only those eigenvalues leaves
    learning in the excited directions untouched.

    Robustness (`huber` k > 0; off by default): an innovation e = y - w . x larger than
    k times the running median of |innovations| is clipped to it before the weights
    move (the band is never narrower than 10% of the target). Latency has heavy tails
    that the features cannot explain (a co-tenant's burst, a page fault): unclipped, one
    such batch drags every weight and the forecasts overshoot for the next
    ~1 / (1 - lam) batches. The median follows a shift that makes most innovations
    large within tens of updates, but a real shift is still learned more slowly: the
    trade (robustness to outside load for slower adaptation) is why it is an option.

    Prior (`prior` > 0; off by default): the fitted weights stay a prior wherever the
    recent data carries less information than `prior` (in units of x x'). Forgetting
    lets the information in a direction the stream no longer excites decay to nothing
    (at full load the co-runner count is about 1 on every batch, so intercept and count
    are collinear); the weights then wander along it with the noise, and the forecasts
    of the next batch that does excite it are far off. Every `check_every` updates the
    posterior (w, P^-1) is combined with a pseudo-observation of the fitted weights
    that tops the information up to `prior` in each eigen-direction short of it
    (stabilised forgetting): well-informed directions learn exactly as before, and
    the cost is one small eigendecomposition per `check_every` updates.

    The update and the top-up are compiled kernels (predlat.predict.jit): in Python their
    dozen numpy calls on ~10 numbers cost more than the arithmetic, and the top-up's
    decomposition once in `check_every` updates set the tail of a scheduler's learning.
    """

    online = True
    _basis: np.ndarray | None = None  # P's eigenvectors at the last top-up (None: identity)

    def __init__(
        self,
        dim: int,
        lam: float = 0.99,
        delta: float = 100.0,
        alpha: float = 1e-6,
        check_every: int = 32,
        huber: float = 0.0,
        scale_rate: float = 0.05,
        prior: float = 0.0,
    ):
        super().__init__(dim)
        if not 0.0 < lam <= 1.0:
            raise ValueError(f"forgetting factor must be in (0, 1], got {lam}")
        if huber < 0:
            raise ValueError(f"huber threshold must be non-negative, got {huber}")
        if prior < 0:
            raise ValueError(f"prior strength must be non-negative, got {prior}")
        self.delta, self.alpha, self.check_every = delta, alpha, check_every
        self.lam, self.huber = float(lam), float(huber)  # (one compiled signature)
        self.scale = 0.0  # running median of |innovation| (0: none seen yet)
        self.scale_rate = scale_rate
        self._up, self._down = math.exp(scale_rate), math.exp(-scale_rate)
        self.P = np.eye(dim) * delta
        self.max_eig = delta
        self._updates = 0
        self.prior = float(prior)
        compile_kernels()
        self.w_prior = np.zeros(dim)  # the fitted weights (the prior's centre)

    def fit(self, X, y) -> RLS:
        X = _as_2d(X)
        y = np.asarray(y, dtype=float)
        if not len(X):
            return self
        w, _ = ridge_solve(X, y, self.alpha)
        self.scale = float(np.median(np.abs(y - X @ w)))
        # Information equivalent to the effective memory of the forgetting factor, so the
        # fitted model adapts as fast as it would have after a long online run.
        memory = len(X) if self.lam >= 1.0 else min(len(X), 1.0 / (1.0 - self.lam))
        gram = X.T @ X * (memory / len(X))
        P = np.linalg.inv(gram + np.eye(self.dim) / self.delta)
        self.P = 0.5 * (P + P.T)
        self.w_prior = w.copy()
        self._set(w)
        return self

    def learn_one(self, x: Sequence[float], y: float) -> None:
        xa = np.asarray(x, dtype=np.float64)
        P, w, self.scale, denom = rls_update(
            self.P, self.w, xa, float(y), self.lam, self.huber, self.scale, self._up, self._down
        )
        if not denom > 1e-12:
            if not math.isfinite(denom):  # a broken P: else no update would ever mend it
                self.P = np.eye(self.dim) * (1.0 / self.prior if self.prior > 0 else self.delta)
            return
        self._updates += 1
        if self._updates % self.check_every == 0:
            if self.prior > 0.0:
                P, w = self._top_up(P, w)
            else:
                P = self._guard(P)
        self.P = P
        self._set(w)

    def _top_up(self, P: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, w) combined with the prior (see the class doc); the prior's own state
        where P is broken, P unchanged where LAPACK does not converge."""
        basis = self._basis if self._basis is not None else np.eye(self.dim)
        with contextlib.suppress(np.linalg.LinAlgError):
            P, w, self._basis = top_up(P, w, self.w_prior, self.prior, self.max_eig, basis)
        return P, w

    def _guard(self, P: np.ndarray) -> np.ndarray:
        P = 0.5 * (P + P.T)
        rows = P.tolist()  # (plain floats: numpy calls made this rarely run cold, slowly)
        if not math.isfinite(sum(map(sum, rows))):
            return np.eye(self.dim) * self.delta
        clipped = _clip_top(P, rows, self.max_eig)
        if clipped is not None:
            return clipped
        eig, vec = np.linalg.eigh(P)
        if eig[-1] <= self.max_eig and eig[0] > 0:
            return P
        eig = np.minimum(np.maximum(eig, 1e-12), self.max_eig)  # (np.clip, unwrapped)
        return (vec * eig) @ vec.T


@kernel
def rls_update(P, w, x, y, lam, huber, scale, up, down):
    """One RLS step on (x, y): (P', w', scale', denom); P and w unchanged where the gain's
    denominator lam + x' P x is not positive. The innovation e = y - w . x is clipped to
    the Huber band first (`huber` > 0; see `RLS`)."""
    px = np.dot(P, x)
    denom = lam + np.dot(x, px)
    if not denom > 1e-12:
        return P, w, scale, denom
    k = px / denom
    e = y - np.dot(w, x)
    if huber > 0.0:
        e, scale = huber_clip(e, y, huber, scale, up, down)
    return (P - k.reshape(-1, 1) * px) / lam, w + k * e, scale, denom


@kernel
def huber_clip(e, y, huber, scale, up, down):
    """The innovation clipped to the band (never narrower than 10% of the target: a fit
    with no residual must still follow a change), and the new scale: a running median of
    |innovation| that steps towards this one by a factor up or down (exp(+-scale_rate)).
    Rare outliers barely move a median, while a shift that makes most innovations large
    doubles the band in about 0.7 / scale_rate updates."""
    size = abs(e)
    band = max(huber * scale, 0.1 * abs(y))
    if scale <= 0.0:
        new_scale = size
    elif size > scale:
        new_scale = scale * up
    else:
        new_scale = scale * down
    if size > band:
        return (band if e > 0 else -band), new_scale
    return e, new_scale


@kernel
def top_up(P, w, w_prior, prior, max_eig, basis):
    """The posterior (w, A = P^-1) combined with the prior's pseudo-observation
    (information T = A' - A at w_prior, A' = A with eigenvalues raised to at least
    `prior`): w' = A'^-1 (A w + T w_prior). Also the guard: P' is symmetric with
    eigenvalues in (0, min(1 / prior, max_eig)]. Returns (P', w', P's eigenvectors);
    `basis`: the last top-up's, where the decomposition starts."""
    P = 0.5 * (P + P.T)
    if not np.isfinite(P.sum()):  # broken: the prior's own state
        return np.eye(len(w)) / prior, w_prior.copy(), basis
    mu, vec = _eigh(P, basis)  # A = P^-1 has eigenvalues 1 / mu, same vectors
    info = 1.0 / np.maximum(mu, 1e-12)  # non-increasing
    floor = max(prior, 1.0 / max_eig)
    if not info[-1] < floor:  # no direction short of the floor: nothing to top up
        return P, w, vec
    topped = np.maximum(info, floor)
    # In A's eigenbasis: w' = (info * (V' w) + (topped - info) * (V' w_prior)) / topped
    vt = np.ascontiguousarray(vec.T)
    a, b = np.dot(vt, w), np.dot(vt, w_prior)
    w = np.dot(vec, (info * a + (topped - info) * b) / topped)
    return np.dot(vec / topped, vt), w, vec


@functools.cache
def compile_kernels() -> None:
    """Compiles the kernels (or loads them from numba's cache) with the argument types of
    a real update, so that no update waits for it: an RLS calls it when it is made."""
    if not COMPILED:
        return
    P, w = np.eye(2), np.ones(2)
    P, w, _, _ = rls_update(P, w, np.ones(2), 1.0, 0.99, 1.0, 0.0, 1.05, 0.95)
    top_up(P, w, w, 1.0, 100.0, np.eye(2))


if COMPILED:
    _eigh = small_eigh
else:  # (interpreted, the Jacobi sweeps would be slow: LAPACK's, through numpy)

    def _eigh(M: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(M)


# The guard's usual case, without an eigendecomposition: one or two eigenvalues (the
# unexcited directions) grew past the bound; each is found by repeated squaring.
_SQUARINGS = 6  # P^64: a ratio of 0.5 between eigenvalues leaves 5e-20 of the second


def _clip_top(P: np.ndarray, rows: list[list[float]], bound: float) -> np.ndarray | None:
    """P with its eigenvalues above `bound` clipped to it (what the eigendecomposition
    does), found largest first by powers of P and removed from it; none left once P's
    trace less those found is within the bound (P is positive definite). None where a
    power did not converge to one eigenvector or P is not positive definite."""
    rest = sum(rows[i][i] for i in range(len(rows)))
    out, deflated = P, P
    for _ in range(len(rows) if rest > bound else 0):
        top = _dominant(deflated)
        if top is None:
            return None
        lam, v = top
        if lam <= bound:
            break
        out = out - (lam - bound) * (v[:, None] * v)
        rest -= lam
        if rest <= bound:
            break
        deflated = deflated - lam * (v[:, None] * v)
    else:
        if rest > bound:
            return None
    return out if _positive_definite(out.tolist()) else None


def _dominant(M: np.ndarray) -> tuple[float, np.ndarray] | None:
    """The eigenvalue of M largest in magnitude and its unit eigenvector, or None if
    M^64 does not single one out (two eigenvalues too close)."""
    # Scaled so that its eigenvalues are at most 1 in magnitude and the largest at
    # least 1 / (n n): its 64th power neither overflows nor underflows.
    size = math.sqrt(float(np.add.reduce(M * M, axis=None)))  # (.sum(), less wrapping)
    if not size > 0.0:
        return None
    Q = M / size
    for _ in range(_SQUARINGS):
        Q = Q.dot(Q)
    diag = Q.diagonal().tolist()
    j = diag.index(max(diag))
    v = Q[:, j]
    norm = float(v.dot(v))
    if not norm > 0.0:
        return None
    v = v / math.sqrt(norm)
    w = M.dot(v)
    lam = float(v.dot(w))
    r = w - lam * v
    if not float(r.dot(r)) <= 1e-28 * lam * lam:
        return None
    return lam, v


def _positive_definite(rows: list[list[float]]) -> bool:
    """Whether a symmetric matrix (rows) has a Cholesky factor."""
    n = len(rows)
    L: list[list[float]] = [[] for _ in range(n)]
    for j in range(n):
        lj = L[j]
        d = rows[j][j] - sum(map(mul, lj, lj))
        if not d > 0.0:
            return False
        d = math.sqrt(d)
        for i in range(j + 1, n):
            li = L[i]
            li.append((rows[i][j] - sum(map(mul, li, lj))) / d)
        lj.append(d)
    return True
