"""Forecast mode, fine view: the ends of the running batches and the candidates.

Every batch's end is the fixed point of

    L_b = solo_b * (a_b + beta_b . F_b),   F_b = (past_b + integral_now^{s_b + L_b} g_b(t) dt) / L_b

where g_b(t) is the co-load b will see: the other batches until their own forecast ends
(and, on a CPU, oversub of their number: nonlinear in the count but piecewise constant
between forecast ends, so its integral is exact too), plus the co-location expected from
work not dispatched yet (`Fill`). The ends depend on each other, so `fine_latencies`
iterates: a sweep of the forecast timeline integrates every batch's co-load up to its
current end, then each batch's equation is solved exactly for its own end with the
others' fixed (a quadratic in L_b); two to four steps converge. A running batch already
past any end its equation allows is overrunning: it stays at its floor.

A co-load and each beta have the channels (count, compute, memory[, oversub]). Each batch
is one row of numbers (`batch_row`), and the whole iteration is one compiled kernel
(predlat.predict.jit): it runs on every decision, on a handful of numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from predlat.predict.base import MAX_SLOWDOWN, MIN_SLOWDOWN
from predlat.predict.colocation import DeviceLoad
from predlat.predict.features import Oversubscription, Vector
from predlat.predict.jit import COMPILED, as_list, floats, kernel, table
from predlat.predict.sweep import (
    B_CU,
    B_MU,
    B_N,
    B_OV,
    F_CU,
    F_MU,
    SOLO,
    START,
    A,
    hinge_exp_integral,
    integrals,
)

# A batch running past its forecast end is forecast to need this fraction of its elapsed
# time more (its remaining time is unknown, but it is surely not over yet).
OVERRUN_FRACTION = 0.05


class Fill(NamedTuple):
    """The co-location expected from work not dispatched yet ("revert"): the expected
    co-runner count relaxes from now's count to the recent average `co_count`, with the
    recent mean latency as time constant; what the known batches do not cover is filled
    in with the recent average co-runner (co_cu, co_mu), scaled by `gain`. (A tuple:
    one is built per forecast.)"""

    revert: float  # 1.0: fill; 0.0: nothing but the known batches
    co_count: float
    co_cu: float
    co_mu: float
    mean_latency: float
    gain: float


def batch_row(start: float, solo: float, a: float, beta: Vector, f: Vector) -> tuple:
    """One batch's numbers for the kernel (oversub's beta 0 where it has none)."""
    b_ov = beta[3] if len(beta) > 3 else 0.0
    return (start, solo, a, beta[0], beta[1], beta[2], b_ov, f[1], f[2])


def kernel_rows(rows: Sequence[Sequence[float]], width: int = 9) -> Any:
    """Rows in the form the kernel takes: a float array when compiled, as they are in
    Python."""
    if not COMPILED:
        return list(rows)
    return np.asarray(rows, dtype=np.float64).reshape(-1, width)


def fine_latencies(
    now: float,
    state: DeviceLoad,
    c_starts: Any,
    rows: Any,
    ov: Oversubscription | None,
    fill: Fill,
    iterations: int,
    tol: float,
) -> list[float]:
    """Latencies of the running batches (the first len(c_starts) rows, with `state.cum`
    at their starts) and of candidates starting at `now` (the rest). `ov`: the
    oversubscription channel, if the predictor has it. Rows (`batch_row`) and c_starts
    in kernel form (`kernel_rows`)."""
    n_all = len(rows)
    t = state.t
    dt = now - t if t is not None and now > t else 0.0
    cum, load = state.cum, state.load
    count = state.count
    ov_dev = ov.at(count - 1) if ov is not None and count else 0.0
    dev = (dt, cum[0], cum[1], cum[2], cum[3], load[0], load[1], load[2], ov_dev)
    if ov is None:
        ov_k, ov_c, knee = _NO_OVERSUB if n_all <= len(_NO_OVERSUB) else floats(n_all), 0.0, 0.0
    else:
        if n_all > len(ov.table):
            ov_k = [ov.at(k) for k in range(n_all)]
            ov_k = np.asarray(ov_k, dtype=np.float64) if COMPILED else ov_k
        else:
            ov_k = ov.array if COMPILED else ov.table
        ov_c, knee = ov.c, ov.knee
    lats = _fixed_point(
        float(now), rows, c_starts, dev, fill, ov_k, ov_c, knee, ov is not None,
        iterations, float(tol),
    )  # fmt: skip
    return as_list(lats)


_NO_OVERSUB = np.zeros(65) if COMPILED else [0.0] * 65


@functools.cache
def compile_kernels() -> None:
    """Compiles the kernel (or loads it from numba's cache) with the argument types of a
    real forecast, with and without the oversub channel, so that no decision waits for
    it: a forecaster calls it when it is made."""
    if not COMPILED:
        return
    for ov in (None, Oversubscription(1, 2)):
        state = DeviceLoad(1.0, ov)
        state.advance(0.0)
        state.start((1.0, 0.5, 0.5))
        row = batch_row(0.0, 1.0, 1.0, (0.1, 0.1, 0.1, 0.1), (1.0, 0.5, 0.5))
        rows = kernel_rows([row, row])
        c_starts = kernel_rows([(0.0, 0.0, 0.0, 0.0)], 4)
        fill = Fill(1.0, 1.0, 0.5, 0.5, 1.0, 1.0)
        fine_latencies(0.5, state, c_starts, rows, ov, fill, 6, 1e-3)


@kernel
def _fixed_point(now, rows, c_starts, dev, fill, ov_k, ov_c, knee, has_ov, iterations, tol):
    """The iteration (see the module doc); returns the latencies."""
    n_all = len(rows)
    coefs, floors, ends, fixed = _start(now, rows, c_starts, dev, ov_k, has_ov)
    last = math.inf  # the previous step's change
    order = [0] * n_all
    for _ in range(iterations):
        _sort_by(ends, order)
        acc = integrals(now, rows, fill, ov_k, ov_c, knee, has_ov, ends, order)
        change = _solve(now, rows, coefs, acc, ends, fixed, floors, has_ov)
        bound = tol * (ends[order[n_all - 1]] - now + 1e-12)
        # Done once the distance left to the fixed point is within tol: this step's
        # change, or twice the estimate of it from the contraction rho = change / last,
        # change rho / (1 - rho) (two steps usually shrink the change ~50-fold).
        if change <= bound or 2.0 * change * change <= bound * (last - change) < math.inf:
            break
        last = change
    lats = floats(n_all)
    for i in range(n_all):
        lats[i] = ends[i] - rows[i][START]
    return lats


@kernel
def _sort_by(keys, order):
    """`order` := the indices sorted by key, stably (as sorted() does; a few items)."""
    for i in range(len(order)):
        order[i] = i
    for i in range(1, len(order)):
        j, k = i, order[i]
        while j > 0 and keys[order[j - 1]] > keys[k]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = k


@kernel
def _start(now, rows, c_starts, dev, ov_k, has_ov):
    """Per batch: its beta . own features and beta . past co-location (constants of its
    equation, `coefs`), the floor of its end, whether it is overrunning; and the start of
    the iteration: the co-load of right now, assumed to last."""
    n_all, n_run = len(rows), len(c_starts)
    dt = dev[0]
    # Past co-location integrals up to now, from each running batch's own point of view.
    c_n = dev[1] + dev[5] * dt
    c_cu = dev[2] + dev[6] * dt
    c_mu = dev[3] + dev[7] * dt
    c_ov = dev[4] + dev[8] * dt
    others_now = n_all - 1
    tot_cu = tot_mu = 0.0
    for i in range(n_all):
        tot_cu += rows[i][F_CU]
        tot_mu += rows[i][F_MU]
    ov_now = ov_k[others_now]
    lo_sd, hi_sd = MIN_SLOWDOWN, MAX_SLOWDOWN
    coefs, floors, ends = table(n_all, 2), floats(n_all), floats(n_all)
    fixed = [False] * n_all
    for i in range(n_all):
        r = rows[i]
        s, solo, a = r[START], r[SOLO], r[A]
        b_n, b_cu, b_mu = r[B_N], r[B_CU], r[B_MU]
        b_ov = r[B_OV] if has_ov else 0.0
        inst = b_n * others_now + b_cu * (tot_cu - r[F_CU]) + b_mu * (tot_mu - r[F_MU])
        inst += b_ov * ov_now
        sd = a + inst
        sd = lo_sd if sd < lo_sd else hi_sd if sd > hi_sd else sd
        floor = now + OVERRUN_FRACTION * (now - s)
        past = 0.0
        over = False
        if i < n_run:
            cs = c_starts[i]
            el = now - s
            if el < 0:
                el = 0.0
            # Co-location seen so far (never negative: rounding).
            p_n = c_n - cs[0] - el
            p_cu = c_cu - cs[1] - r[F_CU] * el
            p_mu = c_mu - cs[2] - r[F_MU] * el
            past = (
                b_n * (p_n if p_n > 0.0 else 0.0)
                + b_cu * (p_cu if p_cu > 0.0 else 0.0)
                + b_mu * (p_mu if p_mu > 0.0 else 0.0)
                + b_ov * (c_ov - cs[3])
            )
            life = floor - s
            if life > 0.0:
                sd_f = a + (past + inst * (floor - now)) / life
                sd_f = lo_sd if sd_f < lo_sd else hi_sd if sd_f > hi_sd else sd_f
                over = s + solo * sd_f <= floor
        coefs[i][0] = b_n + b_cu * r[F_CU] + b_mu * r[F_MU]
        coefs[i][1] = past
        floors[i] = floor
        fixed[i] = over
        end = s + solo * sd
        ends[i] = floor if over or end < floor else end
    return coefs, floors, ends, fixed


@kernel
def _solve(now, rows, coefs, acc, ends, fixed, floors, has_ov):
    """Each batch's own equation with the others' ends fixed: with
    beta . (past + integral to the end) = u + v lat near the current end,
    lat = solo (a + (u + v lat) / lat)  <=>  lat^2 - solo (a + v) lat - solo u = 0.
    Updates `ends` in place; returns the largest change."""
    lo_sd, hi_sd = MIN_SLOWDOWN, MAX_SLOWDOWN
    change = 0.0
    for i in range(len(ends)):
        if fixed[i]:
            continue
        r, g = rows[i], acc[i]
        b_n, b_cu, b_mu = r[B_N], r[B_CU], r[B_MU]
        b_ov = r[B_OV] if has_ov else 0.0
        b_own, past = coefs[i][0], coefs[i][1]
        solo, s, end_i, a = r[SOLO], r[START], ends[i], r[A]
        v = b_n * g[4] + b_cu * g[5] + b_mu * g[6] + b_ov * g[7] - b_own
        lat_old = end_i - s
        u = past + b_n * g[0] + b_cu * g[1] + b_mu * g[2] + b_ov * g[3]
        u = u - b_own * (end_i - now) - v * lat_old
        bq = solo * (a + v)
        disc = bq * bq + 4.0 * solo * u
        if disc >= 0.0:
            lat = 0.5 * (bq + math.sqrt(disc))
        else:
            lat = solo * (a + (u + v * lat_old) / lat_old) if lat_old > 0 else solo
        if lat < solo * lo_sd:
            lat = solo * lo_sd
        elif lat > solo * hi_sd:
            lat = solo * hi_sd
        end = s + lat
        if end < floors[i]:
            end = floors[i]
        d = end - end_i if end > end_i else end_i - end
        if d > change:
            change = d
        ends[i] = end
    return change


__all__ = [
    "OVERRUN_FRACTION",
    "Fill",
    "batch_row",
    "fine_latencies",
    "hinge_exp_integral",
    "kernel_rows",
]
