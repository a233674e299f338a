"""The fine forecast's sweep: the co-load channels a batch will see, integrated along
the forecast timeline segment by segment between consecutive ends (the batches still
running, plus the fill of work not dispatched yet; see predlat.predict.fine_forecast).
Compiled with the rest of the forecast (predlat.predict.jit)."""

from __future__ import annotations

import math

from predlat.predict.jit import kernel, table

# A batch's row (predlat.predict.fine_forecast.batch_row): start, solo latency, slowdown
# intercept, beta (count, compute, memory, oversub), own features (compute, memory).
START, SOLO, A, B_N, B_CU, B_MU, B_OV, F_CU, F_MU = range(9)


@kernel
def integrals(now, rows, fill, ov_k, ov_c, knee, has_ov, ends, order):
    """Per batch (row i of the result): the integrals of (count, compute, memory,
    oversub) from now to its end, then their rates in its last segment. `order`: the
    batches by end; `ov_k[k]`: oversub with k co-runners."""
    revert, co_count, phi_cu, phi_mu, rev, gain = fill
    n_all = len(rows)
    acc = table(n_all, 8)
    cu = mu = 0.0  # batches still running
    for i in range(n_all):
        cu += rows[i][F_CU]
        mu += rows[i][F_MU]
    n = float(n_all)
    excess = (n_all - 1) - co_count
    i_n = i_cu = i_mu = i_ov = 0.0
    t_prev = now
    e_prev = 1.0  # e^-x at t_prev
    for k in range(n_all):
        i = order[k]
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
                if has_ov:
                    if others >= knee:  # above the kink: linear in the fill
                        i_ov += ov_k[others] * seg + ov_c * ir
                    else:  # crosses the kink where others + gain r = knee, if at all
                        x_a, x_b = (t_prev - now) / rev, (end_i - now) / rev
                        a = others - knee + gain * gap
                        hinge = hinge_exp_integral(a, gain * excess, x_a, x_b, e_prev, e_b)
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
        g = acc[i]
        g[0], g[1], g[2], g[3] = i_n, i_cu, i_mu, i_ov
        g[4], g[5], g[6], g[7] = n + r, cu + r * phi_cu, mu + r * phi_mu, h
        n -= 1.0
        cu -= rows[i][F_CU]
        mu -= rows[i][F_MU]
        t_prev = end_i
    return acc


@kernel
def hinge_exp_integral(a, b, x_a, x_b, e_a, e_b):
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
