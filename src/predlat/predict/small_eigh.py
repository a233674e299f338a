"""Eigendecomposition of a small symmetric matrix, compiled (cyclic Jacobi).

Why not LAPACK: RLS tops its covariance up once every few dozen updates (see
predlat.predict.regressors.RLS), so the decomposition always runs cold. LAPACK's dsyevd,
called through numpy or numba, then costs ~100-170 us on a 10 x 10 matrix, almost all of
it fetching its code and workspace back into the caches; it set the tail of a
scheduler's learning step. This kernel is a few hundred bytes of machine code and
touches only the matrix: ~10 us warm or cold. Jacobi is also the most accurate method
for small symmetric matrices (each eigenvalue to high relative accuracy).
"""

from __future__ import annotations

import math

import numpy as np

from predlat.predict.jit import kernel

MAX_SWEEPS = 50  # (converges quadratically: 6-10 sweeps for 10 x 10 in practice)


@kernel
def small_eigh(M, V0):
    """Eigenvalues (ascending) and unit eigenvectors (columns) of the symmetric matrix M,
    as np.linalg.eigh gives them (up to rounding and the signs of the vectors). `V0`:
    orthonormal columns near M's eigenvectors (a previous decomposition's, or the
    identity): M in that basis is nearly diagonal, and two or three sweeps finish it."""
    n = M.shape[0]
    A = np.dot(V0.T, np.dot(M, V0))
    V = V0.copy()
    for _ in range(MAX_SWEEPS):
        rotated = False
        for p in range(n - 1):
            for q in range(p + 1, n):
                rotated |= _rotate(A, V, p, q)
        if not rotated:  # every off-diagonal element negligible (or NaN)
            break
    w = np.empty(n)
    for i in range(n):
        w[i] = A[i, i]
    order = np.argsort(w, kind="mergesort")
    return w[order], np.ascontiguousarray(V[:, order])


@kernel
def _rotate(A, V, p, q):
    """One Jacobi rotation that zeroes A[p, q] (A := J' A J, V := V J); False (and no
    rotation) where A[p, q] is already negligible beside the diagonal: below rounding
    of sqrt(|A[p, p] A[q, q]|)."""
    apq = A[p, q]
    if not abs(apq) > 1e-17 * math.sqrt(abs(A[p, p] * A[q, q])) + 1e-300:
        return False
    theta = (A[q, q] - A[p, p]) / (2.0 * apq)
    if abs(theta) > 1e150:  # (theta^2 would overflow: t ~ 1 / (2 theta))
        t = 0.5 / theta
    else:
        t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
        if theta < 0.0:
            t = -t
    c = 1.0 / math.sqrt(t * t + 1.0)
    s = t * c
    n = A.shape[0]
    for k in range(n):
        akp, akq = A[k, p], A[k, q]
        A[k, p] = c * akp - s * akq
        A[k, q] = s * akp + c * akq
    for k in range(n):
        apk, aqk = A[p, k], A[q, k]
        A[p, k] = c * apk - s * aqk
        A[q, k] = s * apk + c * aqk
    for k in range(n):
        vkp, vkq = V[k, p], V[k, q]
        V[k, p] = c * vkp - s * vkq
        V[k, q] = s * vkp + c * vkq
    return True
