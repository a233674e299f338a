"""Forecast mode: the dispatcher's view of one device.

At a decision instant the future timeline is unknown. The forecaster knows what a
dispatcher knows: the running batches, when each started and the co-location each has
really seen so far (tracked from dispatch and completion events), and the recent load.
Its co-location state is a `DeviceLoad` (predlat.predict.colocation), updated by those
events. The solo, coarse and ewma views fix a batch's co-load at its start; the fine view
forecasts all ends together (predlat.predict.fine_forecast), counting also the
co-location expected from work not dispatched yet, filled in with the recent average
co-runner's features:
  fill="revert" (default)  the expected co-runner count relaxes from now's count to the
                           recent average (the time constant is the recent mean latency);
                           this covers both freed slots refilled by queued work at high
                           load and new arrivals into an idle device at low load.
  fill="none"              nothing but the known batches.
The amount filled in is scaled by a gain adapted online (adapt_fill) so that about half of
the batches end after their forecast: a median forecast, which minimises the relative
error when the future is uncertain.

Every forecast latency is multiplied by a median correction (`correct`, on by default
except for the solo view, which must stay interference-blind): a running median of
actual / forecast latency, stepped by a factor exp(+-correct_step) per finished batch.
What a predictor's features cannot see (a co-tenant, a slow phase of the run) biases
all its forecasts alike; the correction removes that bias within ~1 / correct_step
batches, for every view.

Forecast quantiles come from split-conformal calibration of this device's own forecast
residuals (forecast at the dispatch decision vs the batch's end, both measured from the
decision: the dispatch lag is part of what the scheduler must plan for), seeded from the
predictor's training replay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
from predlat.predict.features import FeatureMap, Vector, fine_load, linear_load
from predlat.predict.fine_forecast import (
    OVERRUN_FRACTION,
    Fill,
    batch_row,
    compile_kernels,
    fine_latencies,
    kernel_rows,
)
from predlat.predict.regressors import compile_kernels as compile_rls
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

FILL_MODES = ("revert", "none")
# Smoothing of the recent co-runner statistics (count, features, mean latency).
RECENT_ALPHA = 0.05
# The median correction's range: a factor beyond it means a broken predictor, not bias.
MAX_CORRECTION = 4.0


@dataclass(frozen=True)
class RunningBatch:
    batch_id: int
    model: str
    batch_size: int
    start: float  # absolute seconds


class ForecastEnd(NamedTuple):
    """(A tuple: several are made per decision, and a frozen dataclass costs ~3x more.)"""

    mean: float  # forecast absolute end time (s)
    quantile: float  # forecast absolute end time at the forecaster's quantile (>= mean)


class _Run:
    __slots__ = ("batch", "c_start", "columns", "f", "kind", "predicted", "solo", "static")

    def __init__(self, batch, f, solo, c_start, static, predicted):
        self.batch = batch
        self.f = f
        self.solo = solo
        self.c_start = c_start
        self.static = static
        self.predicted = predicted
        self.kind = (batch.model, batch.batch_size)
        # (its entries in Forecaster._running_columns, whose columns are these transposed)
        self.columns = (batch.batch_id, batch.start, solo, f, c_start)


class Forecaster:
    """Stateful forecaster of one device's batch end times (see module doc).

    Options: fill ("revert" | "none", see the module doc) with adapt_fill and
    fill_step (online median tracking of the fill gain); correct and correct_step (the
    median correction, see the module doc); learn (default True): feed
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
        correct: bool = True,
        correct_step: float = 0.01,
    ):
        if not 0.0 < quantile < 1.0:
            raise ConfigError(f"forecast quantile must be in (0, 1), got {quantile}")
        if fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
        if not isinstance(predictor, SlowdownModel):
            raise ConfigError(f"predictor {predictor!r} cannot forecast (see SlowdownModel)")
        own = predictor if isinstance(predictor, BasePredictor) else None
        compile_kernels()  # (here, not on the first decision; also RLS's: a predictor
        compile_rls()  # loaded from a file was made without its constructor)
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
        self._columns_key: int | None = None
        self._parts: tuple[list, list] = ([], [])
        self._parts_key: int | None = None
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
        # Median correction of every forecast latency (see the module doc).
        self.correct = correct and self.kind != "solo"
        self.correction = prior.correction if self.correct else 1.0
        self._up, self._down = math.exp(correct_step), math.exp(-correct_step)
        self._decided: dict[int, float] = {}  # released batch -> when it was forecast
        # The predictor learns from fine_load over this forecaster's feature map: the
        # timeline is integrated once for both (the recent co-location is its first
        # three channels).
        self._shared_load = bool(getattr(predictor, "learns_fine_load", False)) and (
            own is not None and own.fmap is self.fmap
        )

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
        decided = self._decided
        decided[record.batch_id] = run.batch.start
        if len(decided) > 1024:  # released but never learned from (a failed batch)
            del decided[next(iter(decided))]
        return run.predicted

    def learn(self, record: BatchRecord, predicted: float | None = None) -> None:
        """What a released batch teaches: the forecast residual (quantile calibration and
        fill gain, median correction), the recent co-location and, if learning is on, the
        predictor. The forecast and the actual latency are both measured from when the
        forecast was made (the dispatch decision)."""
        decided = self._decided.pop(record.batch_id, record.start)
        actual = record.end - decided
        if predicted is not None and predicted > 0 and actual > 0 and record.latency > 0:
            self.calibrator.add(actual / predicted - 1.0)
            late = actual > predicted
            if self.adapt_fill and self.fill:
                step = self.fill_step if late else -self.fill_step
                self.fill_gain = min(2.0, max(0.0, self.fill_gain + step))
            if self.correct:
                corr = self.correction * (self._up if late else self._down)
                self.correction = min(MAX_CORRECTION, max(1.0 / MAX_CORRECTION, corr))
        shared = self.learn_online and self._shared_load and record.latency > 0
        load = fine_load(record, self.fmap) if shared else None
        self._observe_co_location(record, load)
        if shared:
            self.predictor.learn_one(record, load)
        elif self.learn_online:  # (a predictor whose learn_one takes the record alone)
            self.predictor.learn_one(record)

    def _observe_co_location(self, record: BatchRecord, load: Vector | None = None) -> None:
        """The recent co-location, from the batch's linear co-load (`load`: its fine
        load, whose first three channels are the same numbers)."""
        if record.latency <= 0:
            return
        n, cu, mu = linear_load(record, self.fmap) if load is None else load[:3]
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
        (runs, ids, starts, solos, feats, c_starts), (a_s, betas) = self._running_columns()
        if candidates:  # (fresh lists: the cached columns stay as they are)
            fmap, parts = self.fmap, self.predictor.slowdown_parts
            ids, starts = [*ids, *(c.batch_id for c in candidates)], [*starts]
            solos, feats, a_s, betas = [*solos], [*feats], [*a_s], [*betas]
            for c in candidates:
                starts.append(now)
                solos.append(fmap.solo(c.model, c.batch_size))
                feats.append(fmap.co_vec(c.model, c.batch_size))
                a, beta = parts(c.model, c.batch_size)
                a_s.append(a)
                betas.append(beta)

        if self.kind == "fine":
            lats = self._fine(now, c_starts, starts, solos, a_s, betas, feats)
        else:
            lats = self._static(now, runs, candidates, solos, a_s, betas, feats)

        margin = 1.0 + self.calibrator.quantile(self.q)
        corr = self.correction
        out = {}
        for i in range(n_all):
            s, lat = starts[i], lats[i] * corr
            mean = s + lat
            floor = now + OVERRUN_FRACTION * (now - s)
            if mean < floor:
                mean = floor
            q_end = s + lat * margin
            out[ids[i]] = ForecastEnd(mean, q_end if q_end > mean else mean)
        return out

    def _running_columns(self) -> tuple[tuple[list, ...], tuple[list, list]]:
        """Per running batch: the run, id, start, solo latency, features and co-location
        integrals at its start, kept until the running set changes; and its slowdown
        parts (a, beta), kept until the predictor or the running set changes. A decision
        round forecasts several candidates beside the same running batches; callers
        must not change the lists."""
        if self._columns_key != self._runs_version:
            runs = list(self._runs.values())
            cols = list(zip(*[r.columns for r in runs], strict=True)) or [()] * 5
            self._columns = (runs, *cols)
            self._columns_key = self._runs_version
            self._parts_key = None
        version = self.predictor.version
        if self._parts_key != version:
            parts = self.predictor.slowdown_parts
            pairs = [parts(*r.kind) for r in self._columns[0]]
            self._parts = tuple(zip(*pairs, strict=True)) or ((), ())
            self._parts_key = version
        return self._columns, self._parts

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

    def _fine(self, now, c_starts, starts, solos, a_s, betas, feats) -> list[float]:
        rows = kernel_rows(list(map(batch_row, starts, solos, a_s, betas, feats)))
        c_kernel = kernel_rows(c_starts, 4)
        ov = self._ov if self._ov is not None and len(betas[0]) >= 4 else None
        revert = self.fill == "revert" and self._completions > 0
        fill = Fill(
            1.0 if revert else 0.0,
            float(self._co_count),
            *self._co_feat,
            float(self._mean_latency),
            float(self.fill_gain),
        )
        return fine_latencies(now, self._state, c_kernel, rows, ov, fill, self.iterations, self.tol)


def _median_solo(profile: Profile) -> float:
    solos = sorted(
        profile.solo_latency(m, n) for m in profile.models for n in profile.batch_sizes(m)
    )
    return solos[len(solos) // 2] if solos else 0.01
