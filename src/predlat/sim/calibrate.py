"""Fit a simulated device's ground-truth law to real co-location traces.

The law (`predlat.devices.simulated`) says a batch with solo latency S does S x noise of
work, advancing at rate 1 / ((1 + sum of its co-runners' pair slowdowns) x share), with
share = max(1, running / cores). A trace records each batch's real start, end and the
exact intervals its co-runners overlapped it, so for given pair slowdowns p and cores the
work each batch would have done over its real life is

    W_i(p) = sum over intervals of dt / ((1 + sum_b count_b * p[model_i, b]) * share)

and log(W_i / S_i) is that batch's log noise. Per candidate `cores` (none, or 1 up to the
most batches seen at once), p >= 0 is fitted by least squares on those log residuals
(scipy, with the exact Jacobian); the cores with the smallest error wins. The noise's
spread is the residuals' standard deviation per number of co-runners at start, fitted as
sigma + per_corunner x k. A per-model solo scale is fitted with the pairs (the trace's
solo speed over the profile's: a machine busier or idler than when it was profiled);
the device's solo latencies are the profile's times that scale.

A trace records batches, not the host that served them: the hand-offs of a serving
runtime (`predlat.sim.handoff`) are fitted from a runtime's run and given here; without
them the device has none. A noise measured on the batches that run served replaces the
log-normal afterwards, if asked (`predlat.sim.tail.with_served_noise`).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import least_squares

from predlat.devices.simulated import InterferenceLaw
from predlat.errors import ConfigError
from predlat.profiling.profile import Profile
from predlat.sim.device_file import DeviceSpec, ModelCost
from predlat.sim.handoff import HandOff
from predlat.traces.records import BatchRecord

_EPS = 1e-12


@dataclass
class _Segments:
    """Every record's life cut where its co-runner set changes, flattened."""

    record: np.ndarray  # record index of each segment
    dt: np.ndarray
    running: np.ndarray  # batches running in the segment (the record itself included)
    counts: sparse.csr_matrix  # segment x pair parameter: co-runners of that pair


@dataclass(frozen=True)
class PairFit:
    model: str
    co_runner: str
    slowdown: float
    batches: int  # records of `model` that overlapped `co_runner`
    mean_err: float  # mean (law's slowdown / observed - 1) over those records
    mean_abs_err: float


@dataclass
class Calibration:
    spec: DeviceSpec
    pairs: list[PairFit]
    rms_log_err: float  # of per-batch work (the fitted noise, for scale)
    cores_tried: dict[str, float]  # cores -> rms log residual
    sigma_by_corunners: dict[int, float]
    records: int
    solo_scale: dict[str, float]  # trace solo speed / profile's, per model (fitted)
    served: int = 0  # served batches the noise table was measured on (0: no table)


def calibrate(
    records: Sequence[BatchRecord],
    profile: Profile,
    name: str = "calibrated",
    slots: int | None = None,
    handoff: HandOff | None = None,
) -> Calibration:
    """Fit the law to `records` (finished batches with timelines, one device each);
    `handoff`: the serving host's hand-offs, fitted apart (`fit_handoff`)."""
    recs = [r for r in records if r.latency > 0 and r.model in profile.models]
    if not recs:
        raise ConfigError("no batches of profiled models with positive latency to calibrate on")
    models = sorted({r.model for r in recs} | {o.model for r in recs for o in r.timeline})
    missing = [m for m in models if m not in profile.models]
    if missing:
        raise ConfigError(f"the profile lacks co-running models: {', '.join(missing)}")
    index: dict[tuple[str, str], int] = {}
    segs = segments(recs, index)
    solo = np.array([profile.solo_latency(r.model, r.batch_size) for r in recs])
    own = sorted({r.model for r in recs})
    model_of = np.array([own.index(r.model) for r in recs])
    most = int(segs.running.max())
    tried: dict[str, float] = {}
    best: tuple[float, int | None, np.ndarray, np.ndarray] | None = None
    for cores in [None, *range(1, most)]:
        p, g, rms = _fit(segs, solo, model_of, len(own), len(index), cores)
        tried["none" if cores is None else str(cores)] = rms
        if best is None or rms < best[0] - 1e-9:
            best = (rms, cores, p, g)
    assert best is not None
    rms, cores, p, g = best
    resid = residuals(segs, solo, len(recs), p, cores) - g[model_of]
    sigma0, per, by_k = _noise(recs, resid)
    # g is the mean log of work / solo per model: log scale - sigma^2 / 2 (mean-one noise)
    scale = {m: float(np.exp(g[i] + np.var(resid[model_of == i]) / 2)) for i, m in enumerate(own)}
    pairs = {pair: float(p[i]) for pair, i in index.items()}
    law = InterferenceLaw(
        base=float(np.mean(p)) if len(p) else 0.0,
        compute=0.0,
        memory=0.0,
        noise_sigma=sigma0,
        noise_per_corunner=per,
        cores=cores,
        pairs=pairs,
        **(handoff or HandOff()).delays(),
    )
    costs = {m: _model_cost(profile, m, scale.get(m, 1.0)) for m in sorted(profile.models)}
    spec = DeviceSpec(name, costs, law, slots or max(2, most))
    return Calibration(
        spec, _pair_report(recs, index, p, resid), rms, tried, by_k, len(recs), scale
    )


def segments(recs: Sequence[BatchRecord], index: dict[tuple[str, str], int]) -> _Segments:
    rec_i, dts, running, rows, cols, vals = [], [], [], [], [], []
    for i, r in enumerate(recs):
        cuts = sorted(
            {r.start, r.end, *(o.start for o in r.timeline), *(o.end for o in r.timeline)}
        )
        for lo, hi in itertools.pairwise(cuts):
            lo, hi = max(lo, r.start), min(hi, r.end)
            if hi - lo <= _EPS:
                continue
            counts: dict[int, int] = defaultdict(int)
            n = 0
            for o in r.timeline:
                if o.start <= lo + _EPS and o.end >= hi - _EPS:
                    counts[index.setdefault((r.model, o.model), len(index))] += 1
                    n += 1
            seg = len(dts)
            rec_i.append(i)
            dts.append(hi - lo)
            running.append(n + 1)
            for k, c in counts.items():
                rows.append(seg)
                cols.append(k)
                vals.append(c)
    shape = (len(dts), max(1, len(index)))
    matrix = sparse.csr_matrix((vals, (rows, cols)), shape=shape)
    return _Segments(np.array(rec_i), np.array(dts), np.array(running), matrix)


def _share(segs: _Segments, cores: int | None) -> np.ndarray:
    if cores is None:
        return np.ones_like(segs.dt)
    return np.maximum(1.0, segs.running / cores)


def _work(segs: _Segments, n: int, p: np.ndarray, cores: int | None):
    share = _share(segs, cores)
    denom = 1.0 + segs.counts @ p[: segs.counts.shape[1]] if len(p) else np.ones_like(segs.dt)
    per_seg = segs.dt / (denom * share)
    return np.bincount(segs.record, per_seg, minlength=n), per_seg, denom


def residuals(segs, solo, n, p, cores) -> np.ndarray:
    work, _, _ = _work(segs, n, p, cores)
    return np.log(np.maximum(work, _EPS)) - np.log(solo)


def _fit(segs, solo, model_of, nm, k, cores) -> tuple[np.ndarray, np.ndarray, float]:
    """Pair slowdowns p >= 0 and per-model log solo scales g: least squares on
    log W_i(p) - log S_i - g[model_i]."""
    n = len(solo)
    to_rec = sparse.csr_matrix(
        (np.ones(len(segs.dt)), (segs.record, np.arange(len(segs.dt)))), shape=(n, len(segs.dt))
    )
    dg = -sparse.csr_matrix((np.ones(n), (np.arange(n), model_of)), shape=(n, nm))

    def fun(x: np.ndarray) -> np.ndarray:
        return residuals(segs, solo, n, x[:k], cores) - x[k:][model_of]

    def jac(x: np.ndarray):
        work, per_seg, denom = _work(segs, n, x[:k], cores)
        # d log W_i / d p_k = -sum_seg per_seg * count_sk / denom / W_i
        weighted = segs.counts[:, :k].multiply((per_seg / denom)[:, None])
        dp = -(sparse.diags(1.0 / np.maximum(work, _EPS)) @ to_rec @ weighted)
        return sparse.hstack([dp, dg]).tocsr()

    lower = np.concatenate([np.zeros(k), np.full(nm, -np.inf)])
    x0 = np.concatenate([np.full(k, 0.1), np.zeros(nm)])
    fit = least_squares(fun, x0, jac=jac, bounds=(lower, np.inf), method="trf")
    r = fit.fun
    return fit.x[:k], fit.x[k:], float(np.sqrt(np.mean(r * r)))


def _noise(recs: Sequence[BatchRecord], resid: np.ndarray) -> tuple[float, float, dict[int, float]]:
    """Residual spread per co-runner count at start; sigma + per_corunner x k by weighted
    least squares (both clipped at zero)."""
    groups: dict[int, list[float]] = defaultdict(list)
    for r, e in zip(recs, resid, strict=True):
        groups[len(r.co_runners_at_start())].append(float(e))
    by_k = {k: float(np.std(v)) for k, v in sorted(groups.items()) if len(v) >= 2}
    if not by_k:
        return 0.0, 0.0, {}
    ks = np.array(list(by_k))
    sd = np.array(list(by_k.values()))
    w = np.array([len(groups[k]) for k in by_k], dtype=float)
    if len(ks) == 1:
        return float(sd[0]), 0.0, by_k
    a = np.stack([np.ones_like(ks, dtype=float), ks], axis=1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, sd * np.sqrt(w), rcond=None)
    per = max(0.0, float(coef[1]))
    base = float(np.average(sd - per * ks, weights=w))
    return max(0.0, base), per, by_k


def _pair_report(recs, index, p, resid) -> list[PairFit]:
    """Per pair, how far the law's slowdown over each record's real life (latency / work)
    is from the observed one (latency / solo): solo / work - 1 = exp(-residual) - 1."""
    errs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r, e in zip(recs, resid, strict=True):
        for b in {o.model for o in r.timeline}:
            errs[(r.model, b)].append(math.exp(-float(e)) - 1.0)
    out = []
    for (a, b), i in sorted(index.items()):
        e = errs.get((a, b), [])
        out.append(
            PairFit(
                a,
                b,
                float(p[i]),
                len(e),
                float(np.mean(e)) if e else math.nan,
                float(np.mean(np.abs(e))) if e else math.nan,
            )
        )
    return out


def rescaled(cal: Calibration, profile: Profile, slots: int | None = None) -> DeviceSpec:
    """The calibrated device with its solo latencies taken from another profile of the
    same machine (another thread count: a one-at-a-time policy's layout), times the
    same fitted per-model solo scale; the law (pairs, cores, noise) is kept."""
    costs = {m: _model_cost(profile, m, cal.solo_scale.get(m, 1.0)) for m in sorted(profile.models)}
    return DeviceSpec(cal.spec.name, costs, cal.spec.law, slots or cal.spec.slots)


def _model_cost(profile: Profile, model: str, scale: float = 1.0) -> ModelCost:
    sizes = profile.batch_sizes(model)
    feats = profile.features(model, sizes[0])
    return ModelCost(
        {n: profile.solo_latency(model, n) * scale for n in sizes},
        min(1.0, max(0.0, float(feats.get("compute_util", 0.5)))),
        min(1.0, max(0.0, float(feats.get("memory_util", 0.5)))),
    )
