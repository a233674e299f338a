"""The serving host's hand-offs, fitted from what a real runtime's run records.

Between a request's arrival and its answer, a runtime spends time that no device
executes: the request reaches the controller (`arrival_s`), a batch decided by the
scheduler starts on its slot (`dispatch_s`: the rest of the decision, stacking inputs,
waking the slot's thread), and a batch's end reaches the controller before the scheduler
can use its slot again (`completion_s`). A simulated device with these in its law
(`InterferenceLaw`, device.json's `handoff`) sees them as the real scheduler does.

Every request that ran carries its arrival, its batch's decision time (`dispatch`),
start and end (`RequestOutcome`), so each hand-off is the median of one kind of gap:

- dispatch: start - decision, every batch;
- completion: decision - the latest end before it, for batches whose requests had all
  arrived before that end (they were waiting for a slot: the end set the decision off);
- arrival: decision - the batch's last arrival, when no batch ended in between (that
  arrival set the decision off).

Medians, not means: a busy machine's occasional stall is not the host's systematic cost.
The stalls are drawn apart: with enough gaps (`MIN_TABLE`), the dispatch and completion
gaps' quantiles become tables (`QuantileTable`) the simulated device draws each batch's
delays from, so the host's tail reaches the simulated latencies too.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

import numpy as np

from predlat.devices.sim_law import PROBS, QuantileTable
from predlat.devices.simulated import HANDOFFS
from predlat.scheduling.outcome import RequestOutcome
from predlat.sim.device_file import DeviceSpec

MIN_SAMPLES = 5  # fewer gaps of a kind than this: that hand-off is taken as zero
MIN_TABLE = 30  # fewer gaps of a kind than this: no table (its median is drawn)


@dataclass(frozen=True)
class HandOff:
    arrival_s: float = 0.0
    dispatch_s: float = 0.0
    completion_s: float = 0.0
    samples: tuple[int, int, int] = (0, 0, 0)  # gaps each was fitted on (same order)
    dispatch_table: QuantileTable | None = None  # the gaps' quantiles (s), when enough
    completion_table: QuantileTable | None = None

    def delays(self) -> dict[str, Any]:
        """As `InterferenceLaw`'s fields."""
        return {
            **{k: getattr(self, k) for k in HANDOFFS},
            "dispatch_table": self.dispatch_table,
            "completion_table": self.completion_table,
        }

    def to_json(self) -> dict[str, Any]:
        names = ("arrival", "dispatch", "completion")
        tables = {"dispatch": self.dispatch_table, "completion": self.completion_table}
        return {
            **{f"{n}_ms": 1e3 * getattr(self, f"{n}_s") for n in names},
            "samples": dict(zip(names, self.samples, strict=True)),
            **{f"{n}_p99_ms": 1e3 * t.quantile(0.99) for n, t in tables.items() if t},
        }


@dataclass
class _Batch:
    dispatch: float
    start: float
    end: float
    last_arrival: float


def fit_handoff(outcomes: Sequence[RequestOutcome], tables: bool = True) -> HandOff:
    """The hand-offs of the runtime run whose requests ended as `outcomes`; with
    `tables` False, medians only (no gap tables, whatever the gaps)."""
    batches = _batches(outcomes)
    ends = sorted(b.end for b in batches)
    dispatch = [b.start - b.dispatch for b in batches]
    completion, arrival = [], []
    for b in batches:
        i = bisect.bisect_right(ends, b.dispatch) - 1  # the latest end by the decision
        if i >= 0 and b.last_arrival < ends[i]:
            completion.append(b.dispatch - ends[i])
        elif i < 0 or ends[i] < b.last_arrival:
            arrival.append(b.dispatch - b.last_arrival)
    samples = (len(arrival), len(dispatch), len(completion))
    return HandOff(
        _median(arrival),
        _median(dispatch),
        _median(completion),
        samples,
        _table(dispatch) if tables else None,
        _table(completion) if tables else None,
    )


def with_handoff(spec: DeviceSpec, handoff: HandOff) -> DeviceSpec:
    """`spec` with its law's hand-offs set to `handoff`'s."""
    return replace(spec, law=replace(spec.law, **handoff.delays()))


def with_host_cpu(spec: DeviceSpec, ms_per_batch: float | None, cores: int) -> DeviceSpec:
    """`spec` with the host's own CPU per batch (a runtime run's `host_cpu_ms_per_batch`)
    taken from its batches while they hold all `cores` cores; unchanged where the run
    could not measure it (None or NaN)."""
    if ms_per_batch is None or not ms_per_batch > 0:
        return spec
    law = replace(spec.law, host_cpu_s=ms_per_batch / 1e3, host_cores=cores)
    return replace(spec, law=law)


def _batches(outcomes: Sequence[RequestOutcome]) -> list[_Batch]:
    out: dict[int, _Batch] = {}
    for o in outcomes:
        if o.batch_id is None or o.dispatch is None or o.start is None or o.end is None:
            continue
        b = out.get(o.batch_id)
        if b is None:
            out[o.batch_id] = _Batch(o.dispatch, o.start, o.end, o.arrival)
        else:
            b.last_arrival = max(b.last_arrival, o.arrival)
    return list(out.values())


def _median(gaps: list[float]) -> float:
    return max(0.0, median(gaps)) if len(gaps) >= MIN_SAMPLES else 0.0


def _table(gaps: list[float]) -> QuantileTable | None:
    if len(gaps) < MIN_TABLE:
        return None
    return QuantileTable.of(PROBS, [np.maximum(0.0, np.quantile(gaps, PROBS))])
