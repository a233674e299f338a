"""Forecast mode: the dispatcher's view of one device.

At a decision instant the future timeline is unknown. The forecaster knows what a
dispatcher knows: the running batches, when each started and the co-location each has
really seen so far (tracked from dispatch and completion events), and the recent load.
It forecasts every batch's end as the fixed point of

    L_b = solo_b * (a_b + beta_b . F_b),   F_b = (past_b + integral_now^{s_b + L_b} g_b(t) dt) / L_b

where g_b(t) is the co-load b will see: the other batches until their own forecast ends
(and, on a CPU, oversub of their number: nonlinear in the count but piecewise constant
between forecast ends, so its integral is exact too),
plus the co-location expected from work not dispatched yet, filled in with the recent
average co-runner's features:
  fill="revert" (default)  the expected co-runner count relaxes from now's count to the
                           recent average (the time constant is the recent mean latency);
                           what the known batches do not cover is filled in. This covers
                           both freed slots refilled by queued work at high load and new
                           arrivals into an idle device at low load.
  fill="none"              nothing but the known batches.
The amount filled in is scaled by a gain adapted online (adapt_fill) so that about half of
the batches end after their forecast: a median forecast, which minimises the relative
error when the future is uncertain.

The ends depend on each other (a batch's end depends on its co-runners' ends, which depend
on it), so the forecaster iterates: each step solves every batch's equation exactly for its
own end with the others' ends fixed (a quadratic in L_b); two to four steps converge. A
running batch that is already past any end its equation allows is overrunning; it is
forecast to need OVERRUN_FRACTION of its elapsed time more.

Forecast quantiles come from split-conformal calibration of this device's own forecast
residuals (forecast at dispatch vs actual), seeded from the predictor's training replay.

Everything is plain Python floats: for a handful of batches numpy's per-call overhead
would dominate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from predlat.errors import ConfigError
from predlat.predict.base import (
    MAX_SLOWDOWN,
    MIN_SLOWDOWN,
    BasePredictor,
    ForecastPrior,
    SlowdownModel,
)
from predlat.predict.calibration import Calibrator
from predlat.predict.colocation import DeviceLoad
from predlat.predict.features import FeatureMap, linear_load
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

# A batch running past its forecast end is forecast to need this fraction of its elapsed
# time more (its remaining time is unknown, but it is surely not over yet).
OVERRUN_FRACTION = 0.05
FILL_MODES = ("revert", "none")
# Smoothing of the recent co-runner statistics (count, features, mean latency).
RECENT_ALPHA = 0.05


@dataclass(frozen=True)
class RunningBatch:
    batch_id: int
    model: str
    batch_size: int
    start: float  # absolute seconds


@dataclass(frozen=True)
class ForecastEnd:
    mean: float  # forecast absolute end time (s)
    quantile: float  # forecast absolute end time at the forecaster's quantile (>= mean)


class _Run:
    __slots__ = ("batch", "c_start", "f", "predicted", "solo", "static")

    def __init__(self, batch, f, solo, c_start, static, predicted):
        self.batch = batch
        self.f = f
        self.solo = solo
        self.c_start = c_start
        self.static = static
        self.predicted = predicted


class Forecaster:
    """Stateful forecaster of one device's batch end times (see module doc).

    Options: fill ("revert" | "none", see the module doc) with adapt_fill and
    fill_step (online median tracking of the fill gain); learn (default True): feed
    completions to the predictor's learn_one; iterations / tol: fixed-point limits (tol
    relative to the forecast horizon); window, default_margin: calibration of the forecast
    quantile from this device's recent forecast residuals."""

    def __init__(
        self,
        predictor: BasePredictor,
        profile: Profile,
        quantile: float = 0.95,
        *,
        fill: str = "revert",
        learn: bool = True,
        iterations: int = 6,
        tol: float = 1e-3,
        window: int | None = None,
        default_margin: float | None = None,
        adapt_fill: bool = True,
        fill_step: float = 0.01,
    ):
        if not 0.0 < quantile < 1.0:
            raise ConfigError(f"forecast quantile must be in (0, 1), got {quantile}")
        if fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
        if not isinstance(predictor, SlowdownModel):
            raise ConfigError(f"predictor {predictor!r} cannot forecast (see SlowdownModel)")
        own = predictor if isinstance(predictor, BasePredictor) else None
        self.predictor = predictor
        self.profile = profile
        self.q = quantile
        self.fill = "" if fill == "none" else fill
        self.learn_online = learn
        self.iterations = max(1, iterations)
        self.tol = tol
        self.kind = predictor.kind
        self.fmap = own.fmap if own else FeatureMap(profile)
        self.tau = (own.tau if own else 0.0) or _median_solo(profile) * 4.0
        base = own.calibrator if own else Calibrator()
        prior = own.forecast_prior if own else ForecastPrior()
        self.calibrator = Calibrator(
            window=window or base.window,
            default_margin=base.default_margin if default_margin is None else default_margin,
        )
        self.calibrator.extend(prior.residuals or base.residuals())
        self._runs: dict[int, _Run] = {}
        self._runs_version = 0  # counts changes of the running set (see _running_columns)
        self._columns: tuple[list, ...] = ()
        self._columns_key: tuple[int, int] | None = None
        self._ov = self.fmap.oversub  # oversubscription law (None: no such channel)
        self._state = DeviceLoad(self.tau, self._ov)  # the running set's co-location
        self._co_count = 0.0  # recent average co-runner count seen by finished batches
        self._co_feat = (0.0, 0.0)  # recent average (cu, mu) per co-runner
        self._completions = 0
        self._mean_latency = _median_solo(profile)  # recent mean latency of finished batches
        # How much of the expected future co-location to count: adapted online so that
        # about half the batches end after their forecast (a median forecast, which is
        # what minimises the mean relative error when the future is uncertain).
        self.fill_gain = prior.fill_gain if prior.fill == fill else 1.0
        self.adapt_fill = adapt_fill
        self.fill_step = fill_step

    # -- events ------------------------------------------------------------------------
    def running(self) -> list[RunningBatch]:
        return [run.batch for run in self._runs.values()]

    def on_dispatch(self, batch: RunningBatch, predicted_latency: float | None = None) -> None:
        """A batch started. `predicted_latency` (s), if the caller already forecast it,
        saves one forecast; it feeds the calibration of forecast quantiles."""
        if predicted_latency is None:
            predicted_latency = self.forecast(batch.start, (batch,))[batch.batch_id].mean
            predicted_latency -= batch.start
        state = self._state
        state.advance(batch.start)
        f = self.fmap.co_vec(batch.model, batch.batch_size)
        static = None
        if self.kind == "coarse":
            static = state.coarse()[0]
        elif self.kind == "ewma":
            static = state.ewma_view()
        self._runs_version += 1
        self._runs[batch.batch_id] = _Run(
            batch,
            f,
            self.fmap.solo(batch.model, batch.batch_size),
            tuple(state.cum),
            static,
            predicted_latency,
        )
        state.start(f)

    def on_complete(self, record: BatchRecord) -> None:
        """A batch finished; `record` carries its real timeline: `release`, then `learn`."""
        self.learn(record, self.release(record))

    def release(self, record: BatchRecord) -> float | None:
        """The batch leaves the running set (all a forecast needs to stay right); returns
        the latency forecast at its dispatch, for `learn`. Cheap: a scheduler calls it
        before deciding and leaves the learning until after."""
        self._state.advance(record.end)
        run = self._runs.pop(record.batch_id, None)
        if run is None:
            return None
        self._runs_version += 1
        self._state.end(run.f)
        return run.predicted

    def learn(self, record: BatchRecord, predicted: float | None = None) -> None:
        """What a released batch teaches: the forecast residual (quantile calibration and
        fill gain), the recent co-location and, if learning is on, the predictor."""
        if predicted is not None and predicted > 0 and record.latency > 0:
            self.calibrator.add(record.latency / predicted - 1.0)
            if self.adapt_fill and self.fill:
                step = self.fill_step if record.latency > predicted else -self.fill_step
                self.fill_gain = min(2.0, max(0.0, self.fill_gain + step))
        self._observe_co_location(record)
        if self.learn_online:
            self.predictor.learn_one(record)

    def _observe_co_location(self, record: BatchRecord) -> None:
        if record.latency <= 0:
            return
        n, cu, mu = linear_load(record, self.fmap)
        self._completions += 1
        alpha = max(RECENT_ALPHA, 1.0 / self._completions)
        self._co_count += alpha * (n - self._co_count)
        self._mean_latency += alpha * (record.latency - self._mean_latency)
        if n > 0:
            c_cu, c_mu = self._co_feat
            self._co_feat = (c_cu + alpha * (cu / n - c_cu), c_mu + alpha * (mu / n - c_mu))

    # -- forecasting -------------------------------------------------------------------
    def forecast(
        self, now: float, candidates: Sequence[RunningBatch] = ()
    ) -> dict[int, ForecastEnd]:
        """Forecast ends of every running batch and of `candidates` (starting at `now`) as
        if the candidates were dispatched now. Does not change the forecaster's state."""
        n_all = len(self._runs) + len(candidates)
        if n_all == 0:
            return {}
        runs, ids, starts, solos, a_s, betas, feats = self._running_columns()
        fmap, parts = self.fmap, self.predictor.slowdown_parts
        for c in candidates:
            ids.append(c.batch_id)
            starts.append(now)
            solos.append(fmap.solo(c.model, c.batch_size))
            feats.append(fmap.co_vec(c.model, c.batch_size))
            a, beta = parts(c.model, c.batch_size)
            a_s.append(a)
            betas.append(beta)

        kind = self.kind
        if kind == "fine":
            lats = self._fine(now, runs, candidates, starts, solos, a_s, betas, feats)
        else:
            lats = self._static(now, runs, candidates, solos, a_s, betas, feats)

        margin = 1.0 + self.calibrator.quantile(self.q)
        out = {}
        for i in range(n_all):
            s, lat = starts[i], lats[i]
            mean = s + lat
            floor = now + OVERRUN_FRACTION * (now - s)
            if mean < floor:
                mean = floor
            q_end = s + lat * margin
            out[ids[i]] = ForecastEnd(mean, q_end if q_end > mean else mean)
        return out

    def _running_columns(self) -> tuple[list, ...]:
        """Per running batch: the run, id, start, solo latency, slowdown parts (a, beta)
        and features, as fresh lists the caller may extend with candidates. Kept between
        forecasts until the running set or the predictor changes: a decision round
        forecasts several candidates beside the same running batches."""
        key = (self._runs_version, self.predictor.version)
        if self._columns_key != key:
            runs = list(self._runs.values())
            parts = self.predictor.slowdown_parts
            split = [parts(r.batch.model, r.batch.batch_size) for r in runs]
            self._columns = (
                runs,
                [r.batch.batch_id for r in runs],
                [r.batch.start for r in runs],
                [r.solo for r in runs],
                [a for a, _ in split],
                [beta for _, beta in split],
                [r.f for r in runs],
            )
            self._columns_key = key
        return tuple(list(column) for column in self._columns)

    def _static(self, now, runs, candidates, solos, a_s, betas, feats) -> list[float]:
        """solo, coarse and ewma: each batch's co-load is fixed at its start."""
        kind = self.kind
        if kind == "solo":
            return list(solos)
        loads = [run.static for run in runs]
        if candidates:
            if kind == "coarse":
                loads.extend(self._state.coarse(feats[len(runs) :]))
            else:
                loads.extend([self._state.ewma_view(now)] * len(candidates))
        lats = []
        for solo, a, beta, g in zip(solos, a_s, betas, loads, strict=True):
            sd = a + beta[0] * g[0] + beta[1] * g[1] + beta[2] * g[2]
            if len(g) > 3 and len(beta) > 3:
                sd += beta[3] * g[3]
            sd = MIN_SLOWDOWN if sd < MIN_SLOWDOWN else MAX_SLOWDOWN if sd > MAX_SLOWDOWN else sd
            lats.append(solo * sd)
        return lats

    def _fine(self, now, runs, candidates, starts, solos, a_s, betas, feats) -> list[float]:
        n_run, n_all = len(runs), len(starts)
        ov = self._ov
        if ov is not None and len(betas[0]) < 4:
            ov = None  # a predictor without the channel
        # Past co-location integrals, from each running batch's own point of view (they
        # enter each batch's equation only through beta . past).
        state = self._state
        cum, load = state.cum, state.load
        dt = now - state.t if state.t is not None and now > state.t else 0.0
        c0 = cum[0] + load[0] * dt
        c1 = cum[1] + load[1] * dt
        c2 = cum[2] + load[2] * dt
        c4 = cum[3]
        if ov is not None:
            # Oversub: c (threads / cores) above its knee in the co-runner count, 0 below.
            ov_c, knee, ov_at = ov.c, ov.knee, ov.at
            count_now = int(load[0] + 0.5)
            if count_now:
                c4 += ov_at(count_now - 1) * dt
        else:
            ov_c, knee, ov_at = 0.0, 0.0, None
        tot_cu = 0.0
        tot_mu = 0.0
        for f in feats:
            tot_cu += f[1]
            tot_mu += f[2]
        fill = self.fill if self._completions > 0 else ""
        co_count, rev, gain = self._co_count, self._mean_latency, self.fill_gain
        phi_cu, phi_mu = self._co_feat
        lo_sd, hi_sd = MIN_SLOWDOWN, MAX_SLOWDOWN
        others_now = n_all - 1
        # oversub with k co-runners, k = 0 .. n_all - 1 (the counts the sweep meets)
        if ov is None:
            ov_k = [0.0] * n_all
        else:
            ov_k = ov.table if n_all <= len(ov.table) else [ov_at(k) for k in range(n_all)]
        ov_now = ov_k[others_now]

        # Per batch: beta, beta . past (a constant), beta . own features, the floor of its
        # end; and the start of the iteration: the co-load of right now, assumed to last.
        # A running batch that would be over even so is overrunning: its end stays at its
        # floor.
        coefs, floors, ends, fixed = [], [], [], []
        for i in range(n_all):
            beta, f, s = betas[i], feats[i], starts[i]
            b0, b1, b2 = beta[0], beta[1], beta[2]
            b4 = beta[3] if ov is not None else 0.0
            inst = b0 * others_now + b1 * (tot_cu - f[1]) + b2 * (tot_mu - f[2])
            inst += b4 * ov_now
            sd = a_s[i] + inst
            sd = lo_sd if sd < lo_sd else hi_sd if sd > hi_sd else sd
            floor = now + OVERRUN_FRACTION * (now - s)
            pu = 0.0
            over = False
            if i < n_run:
                cs = runs[i].c_start
                el = now - s
                if el < 0:
                    el = 0.0
                p0 = c0 - cs[0]
                pu = (
                    b0 * max(0.0, p0 - el)
                    + b1 * max(0.0, c1 - cs[1] - f[1] * el)
                    + b2 * max(0.0, c2 - cs[2] - f[2] * el)
                    + b4 * (c4 - cs[3])
                )
                life = floor - s
                if life > 0.0:
                    sd_f = a_s[i] + (pu + inst * (floor - now)) / life
                    sd_f = lo_sd if sd_f < lo_sd else hi_sd if sd_f > hi_sd else sd_f
                    over = s + solos[i] * sd_f <= floor
            # beta, beta . (this batch's own features), beta . past
            coefs.append((b0, b1, b2, b4, b0 + b1 * f[1] + b2 * f[2], pu))
            floors.append(floor)
            fixed.append(over)
            end = s + solos[i] * sd
            ends.append(floor if over or end < floor else end)

        # Per batch, from the sweep: the integrals of the co-load channels from now to its
        # end, and their rates in its last segment.
        acc: list[tuple[float, ...]] = [()] * n_all
        revert = fill == "revert"
        excess = others_now - co_count
        for _ in range(self.iterations):
            order = sorted(range(n_all), key=ends.__getitem__)
            # Sweep the forecast timeline segment by segment (between consecutive ends).
            ln, lcu, lmu = float(n_all), tot_cu, tot_mu  # load of the batches still active
            a0 = a1 = a2 = a4 = 0.0
            t_prev = now
            e_prev = 1.0  # e^-x at t_prev
            for k, i in enumerate(order):
                others = n_all - k - 1
                end_i = ends[i]
                seg = end_i - t_prev
                if revert:
                    # Expected co-runner count relaxes from now's to the recent average with
                    # the recent mean latency as time constant: mean + excess e^-x, x = time
                    # since now / rev. Batches known to run count as they are; the rest of
                    # the expectation, r = max(0, gap + excess e^-x), is filled in.
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
                        de = hi_e - lo_e
                        ir = (gap * width + excess * de) * rev * gain
                        a0 += ln * seg + ir
                        a1 += lcu * seg + phi_cu * ir
                        a2 += lmu * seg + phi_mu * ir
                        if ov is not None:
                            if others >= knee:  # above the kink: linear in the fill
                                a4 += ov_k[others] * seg + ov_c * ir
                            else:  # crosses the kink where others + gain r = knee, if at all
                                a4 += (
                                    ov_c
                                    * rev
                                    * _hinge_exp_integral(
                                        others - knee + gain * gap,
                                        gain * excess,
                                        (t_prev - now) / rev,
                                        (end_i - now) / rev,
                                        e_prev,
                                        e_b,
                                    )
                                )
                    else:
                        a0 += ln * seg
                        a1 += lcu * seg
                        a2 += lmu * seg
                        a4 += ov_k[others] * seg
                    r = r_b * gain if r_b > 0.0 else 0.0
                    e_prev = e_b
                else:
                    r = 0.0
                    a0 += ln * seg
                    a1 += lcu * seg
                    a2 += lmu * seg
                # oversub at the segment's end (the expected count is others + r there)
                if r == 0.0:
                    h = ov_k[others]
                else:
                    h = ov_c * (others + r - knee)
                    if h < 0.0:
                        h = 0.0
                if not revert:
                    a4 += h * seg
                acc[i] = (a0, a1, a2, a4, ln + r, lcu + r * phi_cu, lmu + r * phi_mu, h)
                f = feats[i]
                ln -= 1.0
                lcu -= f[1]
                lmu -= f[2]
                t_prev = end_i
            # Solve each batch's own equation with the others' ends fixed: with
            # beta . (past + integral to the end) = u + v lat near the current end,
            # lat = solo (a + (u + v lat) / lat)  <=>  lat^2 - solo (a + v) lat - solo u = 0.
            change = 0.0
            new_ends = []
            for i in range(n_all):
                if fixed[i]:
                    new_ends.append(ends[i])
                    continue
                b0, b1, b2, b4, bf, pu = coefs[i]
                solo, s, end_i = solos[i], starts[i], ends[i]
                i0, i1, i2, i4, s0, s1, s2, s4 = acc[i]
                v = b0 * s0 + b1 * s1 + b2 * s2 + b4 * s4 - bf
                lat_old = end_i - s
                u = pu + b0 * i0 + b1 * i1 + b2 * i2 + b4 * i4 - bf * (end_i - now) - v * lat_old
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
                floor = floors[i]
                if end < floor:
                    end = floor
                d = end - end_i
                if d < 0.0:
                    d = -d
                if d > change:
                    change = d
                new_ends.append(end)
            ends = new_ends
            if change <= self.tol * (ends[order[-1]] - now + 1e-12):
                break
        return [ends[i] - starts[i] for i in range(n_all)]


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


def replay(
    predictor: BasePredictor,
    records: Iterable[BatchRecord],
    quantile: float = 0.95,
    *,
    profile: Profile | None = None,
    learn: bool = True,
    **options,
) -> list[tuple[BatchRecord, ForecastEnd]]:
    """Replay finished batches' dispatch and completion events in time order through one
    forecaster per device; return each batch with the forecast made at its start.
    Completions at the same instant come before dispatches (a freed slot is refilled)."""
    return replay_forecasters(
        predictor, records, quantile, profile=profile, learn=learn, **options
    )[0]


def replay_forecasters(
    predictor: BasePredictor,
    records: Iterable[BatchRecord],
    quantile: float = 0.95,
    *,
    profile: Profile | None = None,
    learn: bool = True,
    **options,
) -> tuple[list[tuple[BatchRecord, ForecastEnd]], dict[int, Forecaster]]:
    """`replay`, also returning the forecasters (by device) in their final state."""
    recs = [r for r in records if r.latency > 0]
    events = []
    for r in recs:
        events.append((r.start, 1, r.batch_id, r))
        events.append((r.end, 0, r.batch_id, r))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    forecasters: dict[int, Forecaster] = {}
    out: list[tuple[BatchRecord, ForecastEnd]] = []
    for t, kind, _, rec in events:
        fc = forecasters.get(rec.device)
        if fc is None:
            fc = Forecaster(
                predictor, profile or predictor.profile, quantile, learn=learn, **options
            )
            forecasters[rec.device] = fc
        if kind == 1:
            batch = RunningBatch(rec.batch_id, rec.model, rec.batch_size, t)
            end = fc.forecast(t, (batch,))[rec.batch_id]
            out.append((rec, end))
            fc.on_dispatch(batch, end.mean - t)
        else:
            fc.on_complete(rec)
    return out, forecasters


def calibrate_forecast(
    predictor: BasePredictor, records: Sequence[BatchRecord], **options
) -> ForecastPrior:
    """Replay `records` in forecast mode (without learning): the residuals and fill gain
    new forecasters of `predictor` start from."""
    pairs, forecasters = replay_forecasters(predictor, records, learn=False, **options)
    residuals = [
        rec.latency / (end.mean - rec.start) - 1.0
        for rec, end in pairs
        if end.mean > rec.start and rec.latency > 0
    ]
    prior = ForecastPrior(residuals[-predictor.calibrator.window :])
    if forecasters:
        gains = [fc.fill_gain for fc in forecasters.values()]
        prior.fill = next(iter(forecasters.values())).fill or "none"
        prior.fill_gain = sum(gains) / len(gains)
    return prior


def _median_solo(profile: Profile) -> float:
    solos = sorted(
        profile.solo_latency(m, n) for m in profile.models for n in profile.batch_sizes(m)
    )
    return solos[len(solos) // 2] if solos else 0.01
