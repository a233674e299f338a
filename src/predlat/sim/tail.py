"""The noise of batches a serving runtime ran, measured as a table (`QuantileTable`).

A calibration fits its law (pair slowdowns, cores) on a co-location trace, and its
log-normal noise on the same trace's residuals. Batches served by a real runtime have a
heavier, skewed tail than a log-normal of the same spread: host stalls (the OS, other
threads, the GIL) lengthen some batches a lot and shorten none, and a symmetric fit
spends its spread on a left tail that is not there. So the noise is measured on a
runtime's own batches instead: each record's log residual under the fitted law (the
work the law says it did over its real life, against the device's solo latency) is
`log(work / solo)`, and the table holds its quantiles per number of batches already
running when the batch started. A device drawing from that table gives batches the
runtime's tail, and records simulated with a table give it back (the test).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from predlat.devices.sim_law import PROBS, QuantileTable
from predlat.sim.calibrate import Calibration, residuals, segments
from predlat.sim.device_file import DeviceSpec
from predlat.traces.records import BatchRecord

MIN_SAMPLES = 30  # batches per co-runner count for a row of its own (fewer: pooled)
MIN_RECORDS = 60  # fewer served batches than this: no table (the log-normal stays)


def log_residuals(records: Sequence[BatchRecord], spec: DeviceSpec) -> np.ndarray:
    """Per record (positive latency, models of `spec`): log(work the law of `spec` says it
    did over its real life / its solo latency on `spec`), its noise draw had the law
    made it."""
    index: dict[tuple[str, str], int] = {}
    segs = segments(records, index)
    law, models = spec.law, spec.models
    p = np.zeros(max(1, len(index)))
    for (a, b), i in index.items():
        ca, cb = models[a], models[b]
        p[i] = law.pair_of(a, (ca.compute, ca.memory), b, (cb.compute, cb.memory))
    solo = np.array([models[r.model].latency(r.batch_size) for r in records])
    return residuals(segs, solo, len(records), p, law.cores)


def fit_noise_table(
    records: Sequence[BatchRecord], spec: DeviceSpec, probs: Sequence[float] = PROBS
) -> QuantileTable | None:
    """The quantiles of `records`' log residuals under `spec`'s law, one row per number
    of co-runners at start up to the largest with `MIN_SAMPLES` batches (a count below
    that with fewer takes the pooled quantiles); None with fewer than `MIN_RECORDS`."""
    recs = [r for r in records if r.latency > 0 and r.model in spec.models]
    recs = [r for r in recs if all(o.model in spec.models for o in r.timeline)]
    if len(recs) < MIN_RECORDS:
        return None
    resid = log_residuals(recs, spec)
    groups: dict[int, list[float]] = defaultdict(list)
    for r, e in zip(recs, resid, strict=True):
        groups[len(r.co_runners_at_start())].append(float(e))
    full = [k for k, v in groups.items() if len(v) >= MIN_SAMPLES]
    pooled = np.quantile(resid, probs)
    rows = [
        np.quantile(groups[k], probs) if k in full else pooled
        for k in range(max(full, default=0) + 1)
    ]
    return QuantileTable.of(probs, rows)


def with_served_noise(cal: Calibration, served: Sequence[BatchRecord]) -> Calibration:
    """`cal` with its noise measured on the batches a runtime `served` (`fit_noise_table`
    under its fitted law); as it is when they are too few."""
    table = fit_noise_table(served, cal.spec)
    if table is None:
        return cal
    law = replace(cal.spec.law, noise_table=table)
    return replace(cal, spec=replace(cal.spec, law=law), served=len(served))
