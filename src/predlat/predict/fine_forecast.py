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

A co-load and each beta have the channels (count, compute, memory[, oversub]). Plain
floats throughout: for a handful of batches numpy's per-call overhead would dominate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from predlat.predict.base import MAX_SLOWDOWN, MIN_SLOWDOWN
from predlat.predict.colocation import DeviceLoad
from predlat.predict.features import Oversubscription, Vector

# A batch running past its forecast end is forecast to need this fraction of its elapsed
# time more (its remaining time is unknown, but it is surely not over yet).
OVERRUN_FRACTION = 0.05


class Fill(NamedTuple):
    """The co-location expected from work not dispatched yet ("revert"): the expected
    co-runner count relaxes from now's count to the recent average `co_count`, with the
    recent mean latency as time constant; what the known batches do not cover is filled
    in with the recent average co-runner (co_cu, co_mu), scaled by `gain`. (A tuple:
    one is built per forecast.)"""

    revert: bool  # False: nothing but the known batches
    co_count: float
    co_cu: float
    co_mu: float
    mean_latency: float
    gain: float


def fine_latencies(
    now: float,
    state: DeviceLoad,
    c_starts: Sequence[Vector],
    starts: Sequence[float],
    solos: Sequence[float],
    a_s: Sequence[float],
    betas: Sequence[Vector],
    feats: Sequence[Vector],
    fill: Fill,
    iterations: int,
    tol: float,
) -> list[float]:
    """Latencies of the running batches (the first len(c_starts), with `state.cum` at
    their starts) and of candidates starting at `now` (the rest)."""
    n_all = len(starts)
    ov = state.ov if state.ov is not None and len(betas[0]) >= 4 else None
    sweep = _Sweep(now, feats, fill, ov)
    coefs, floors, ends, fixed = _start(now, state, c_starts, starts, solos, a_s, betas, sweep)
    last = math.inf  # the previous step's change
    for _ in range(iterations):
        order = sorted(range(n_all), key=ends.__getitem__)
        acc = sweep.integrals(ends, order)
        ends, change = _solve(now, coefs, acc, ends, fixed, floors, starts, solos, a_s)
        bound = tol * (ends[order[-1]] - now + 1e-12)
        # Done once the distance left to the fixed point is within tol: this step's
        # change, or twice the estimate of it from the contraction rho = change / last,
        # change rho / (1 - rho) (two steps usually shrink the change ~50-fold).
        if change <= bound or 2.0 * change * change <= bound * (last - change) < math.inf:
            break
        last = change
    return [ends[i] - starts[i] for i in range(n_all)]


class _Sweep:
    """Integrates the co-load channels along the forecast timeline, segment by segment
    between consecutive ends: the batches still running, plus the fill."""

    __slots__ = ("excess", "feats", "fill", "knee", "now", "others_now", "ov", "ov_c", "ov_k")
    __slots__ += ("tot_cu", "tot_mu")

    def __init__(
        self, now: float, feats: Sequence[Vector], fill: Fill, ov: Oversubscription | None
    ):
        self.now, self.feats, self.fill = now, feats, fill
        n_all = len(feats)
        self.tot_cu = 0.0
        self.tot_mu = 0.0
        for f in feats:
            self.tot_cu += f[1]
            self.tot_mu += f[2]
        self.others_now = n_all - 1
        self.excess = self.others_now - fill.co_count
        self.ov = ov
        # Oversub: c (threads / cores) above its knee in the co-runner count, 0 below.
        self.ov_c, self.knee = (ov.c, ov.knee) if ov is not None else (0.0, 0.0)
        # oversub with k co-runners, k = 0 .. n_all - 1 (the counts the sweep meets)
        if ov is None:
            self.ov_k = [0.0] * n_all
        else:
            self.ov_k = ov.table if n_all <= len(ov.table) else [ov.at(k) for k in range(n_all)]

    def integrals(self, ends: list[float], order: list[int]) -> list[tuple[float, ...]]:
        """Per batch: the integrals of (count, compute, memory, oversub) from now to its
        end, then their rates in its last segment."""
        now, feats, fill, ov = self.now, self.feats, self.fill, self.ov
        n_all, ov_k, ov_c, knee = len(feats), self.ov_k, self.ov_c, self.knee
        co_count, rev, gain = fill.co_count, fill.mean_latency, fill.gain
        phi_cu, phi_mu, excess, revert = fill.co_cu, fill.co_mu, self.excess, fill.revert
        acc: list[tuple[float, ...]] = [()] * n_all
        n, cu, mu = float(n_all), self.tot_cu, self.tot_mu  # batches still running
        i_n = i_cu = i_mu = i_ov = 0.0
        t_prev = now
        e_prev = 1.0  # e^-x at t_prev
        for k, i in enumerate(order):
            others = n_all - k - 1
            end_i = ends[i]
            seg = end_i - t_prev
            r = 0.0  # expected fill at the segment's end
            if revert:
                # Expected co-runner count: mean + excess e^-x, x = time since now / rev.
                # Batches known to run count as they are; the rest of the expectation,
                # r = max(0, gap + excess e^-x), is filled in.
                gap = co_count - others
                e_b = math.exp((now - end_i) / rev)
                r_a = gap + excess * e_prev
                r_b = gap + excess * e_b
                if r_a > 0.0 or r_b > 0.0:
                    # r is monotone in time: positive over the segment or a part of it.
                    if r_a >= 0.0 and r_b >= 0.0:
                        hi_e, lo_e, width = e_prev, e_b, seg / rev
                    else:
                        e_x = -gap / excess  # where r crosses zero
                        x_x = -math.log(e_x)
                        if r_a > 0.0:
                            hi_e, lo_e, width = e_prev, e_x, x_x - (t_prev - now) / rev
                        else:
                            hi_e, lo_e, width = e_x, e_b, (end_i - now) / rev - x_x
                    ir = (gap * width + excess * (hi_e - lo_e)) * rev * gain
                    i_n += n * seg + ir
                    i_cu += cu * seg + phi_cu * ir
                    i_mu += mu * seg + phi_mu * ir
                    if ov is not None:
                        if others >= knee:  # above the kink: linear in the fill
                            i_ov += ov_k[others] * seg + ov_c * ir
                        else:  # crosses the kink where others + gain r = knee, if at all
                            x_a, x_b = (t_prev - now) / rev, (end_i - now) / rev
                            a = others - knee + gain * gap
                            hinge = _hinge_exp_integral(a, gain * excess, x_a, x_b, e_prev, e_b)
                            i_ov += ov_c * rev * hinge
                else:
                    i_n += n * seg
                    i_cu += cu * seg
                    i_mu += mu * seg
                    i_ov += ov_k[others] * seg
                r = r_b * gain if r_b > 0.0 else 0.0
                e_prev = e_b
            else:
                i_n += n * seg
                i_cu += cu * seg
                i_mu += mu * seg
            # oversub at the segment's end (the expected count is others + r there)
            if r == 0.0:
                h = ov_k[others]
            else:
                h = ov_c * (others + r - knee)
                if h < 0.0:
                    h = 0.0
            if not revert:
                i_ov += h * seg
            acc[i] = (i_n, i_cu, i_mu, i_ov, n + r, cu + r * phi_cu, mu + r * phi_mu, h)
            f = feats[i]
            n -= 1.0
            cu -= f[1]
            mu -= f[2]
            t_prev = end_i
        return acc


def _start(now, state, c_starts, starts, solos, a_s, betas, sweep: _Sweep):
    """Per batch: its beta, beta . own features and beta . past co-location (constants
    of its equation), the floor of its end, whether it is overrunning; and the start of
    the iteration: the co-load of right now, assumed to last."""
    n_run = len(c_starts)
    ov = sweep.ov
    # Past co-location integrals up to now, from each running batch's own point of view.
    cum, load = state.cum, state.load
    dt = now - state.t if state.t is not None and now > state.t else 0.0
    c_n = cum[0] + load[0] * dt
    c_cu = cum[1] + load[1] * dt
    c_mu = cum[2] + load[2] * dt
    c_ov = cum[3]
    if ov is not None and state.count:
        c_ov += ov.at(state.count - 1) * dt
    others_now, tot_cu, tot_mu = sweep.others_now, sweep.tot_cu, sweep.tot_mu
    ov_now = sweep.ov_k[others_now]
    lo_sd, hi_sd = MIN_SLOWDOWN, MAX_SLOWDOWN  # (inline clipping: a call costs more)
    coefs, floors, ends, fixed = [], [], [], []
    for i in range(len(starts)):
        beta, f, s = betas[i], sweep.feats[i], starts[i]
        b_n, b_cu, b_mu = beta[0], beta[1], beta[2]
        b_ov = beta[3] if ov is not None else 0.0
        inst = b_n * others_now + b_cu * (tot_cu - f[1]) + b_mu * (tot_mu - f[2])
        inst += b_ov * ov_now
        sd = a_s[i] + inst
        sd = lo_sd if sd < lo_sd else hi_sd if sd > hi_sd else sd
        floor = now + OVERRUN_FRACTION * (now - s)
        past = 0.0
        over = False
        if i < n_run:
            cs = c_starts[i]
            el = now - s
            if el < 0:
                el = 0.0
            # Co-location seen so far (never negative: rounding), as max(0.0, x) gives
            # it, inlined: this runs for every running batch of every forecast.
            p_n = c_n - cs[0] - el
            p_cu = c_cu - cs[1] - f[1] * el
            p_mu = c_mu - cs[2] - f[2] * el
            past = (
                b_n * (p_n if p_n > 0.0 else 0.0)
                + b_cu * (p_cu if p_cu > 0.0 else 0.0)
                + b_mu * (p_mu if p_mu > 0.0 else 0.0)
                + b_ov * (c_ov - cs[3])
            )
            life = floor - s
            if life > 0.0:
                sd_f = a_s[i] + (past + inst * (floor - now)) / life
                sd_f = lo_sd if sd_f < lo_sd else hi_sd if sd_f > hi_sd else sd_f
                over = s + solos[i] * sd_f <= floor
        coefs.append((b_n, b_cu, b_mu, b_ov, b_n + b_cu * f[1] + b_mu * f[2], past))
        floors.append(floor)
        fixed.append(over)
        end = s + solos[i] * sd
        ends.append(floor if over or end < floor else end)
    return coefs, floors, ends, fixed


def _solve(now, coefs, acc, ends, fixed, floors, starts, solos, a_s) -> tuple[list[float], float]:
    """Each batch's own equation with the others' ends fixed: with
    beta . (past + integral to the end) = u + v lat near the current end,
    lat = solo (a + (u + v lat) / lat)  <=>  lat^2 - solo (a + v) lat - solo u = 0.
    Returns the new ends and the largest change."""
    lo_sd, hi_sd = MIN_SLOWDOWN, MAX_SLOWDOWN
    change = 0.0
    new_ends = []
    for i in range(len(ends)):
        if fixed[i]:
            new_ends.append(ends[i])
            continue
        b_n, b_cu, b_mu, b_ov, b_own, past = coefs[i]
        solo, s, end_i = solos[i], starts[i], ends[i]
        i_n, i_cu, i_mu, i_ov, r_n, r_cu, r_mu, r_ov = acc[i]
        v = b_n * r_n + b_cu * r_cu + b_mu * r_mu + b_ov * r_ov - b_own
        lat_old = end_i - s
        u = past + b_n * i_n + b_cu * i_cu + b_mu * i_mu + b_ov * i_ov
        u = u - b_own * (end_i - now) - v * lat_old
        bq = solo * (a_s[i] + v)
        disc = bq * bq + 4.0 * solo * u
        if disc >= 0.0:
            lat = 0.5 * (bq + math.sqrt(disc))
        else:
            lat = solo * (a_s[i] + (u + v * lat_old) / lat_old) if lat_old > 0 else solo
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
        new_ends.append(end)
    return new_ends, change


def _hinge_exp_integral(a: float, b: float, x_a: float, x_b: float, e_a: float, e_b: float):
    """Integral over x in [x_a, x_b] of max(0, a + b e^-x), given e_a = e^-x_a and
    e_b = e^-x_b (the integrand is monotone, so positive on one sub-interval at most)."""
    f_a = a + b * e_a
    f_b = a + b * e_b
    if f_a <= 0.0 and f_b <= 0.0:
        return 0.0
    if f_a >= 0.0 and f_b >= 0.0:
        return a * (x_b - x_a) + b * (e_a - e_b)
    e_x = -a / b  # where the integrand crosses zero
    x_x = -math.log(e_x)
    if f_a > 0.0:
        return a * (x_x - x_a) + b * (e_a - e_x)
    return a * (x_b - x_x) + b * (e_x - e_b)
