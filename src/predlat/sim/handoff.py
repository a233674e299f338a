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

A run of a one-at-a-time policy (one slot, no co-runner) also shows the device's solo
speed while the runtime serves (`fit_serving_scale`): with every core in one batch, the
runtime's own threads (controller, clients) take turns with the batch's, which a solo
profile measured without them does not see.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

from predlat.devices.simulated import HANDOFFS
from predlat.profiling.profile import Profile
from predlat.scheduling.outcome import RequestOutcome
from predlat.sim.device_file import DeviceSpec

MIN_SAMPLES = 5  # fewer gaps of a kind than this: that hand-off is taken as zero


@dataclass(frozen=True)
class HandOff:
    arrival_s: float = 0.0
    dispatch_s: float = 0.0
    completion_s: float = 0.0
    samples: tuple[int, int, int] = (0, 0, 0)  # gaps each was fitted on (same order)

    def delays(self) -> dict[str, float]:
        """As `InterferenceLaw`'s fields."""
        return {k: getattr(self, k) for k in HANDOFFS}

    def to_json(self) -> dict[str, Any]:
        names = ("arrival", "dispatch", "completion")
        return {
            **{f"{n}_ms": 1e3 * getattr(self, f"{n}_s") for n in names},
            "samples": dict(zip(names, self.samples, strict=True)),
        }


@dataclass
class _Batch:
    dispatch: float
    start: float
    end: float
    last_arrival: float


def fit_handoff(outcomes: Sequence[RequestOutcome]) -> HandOff:
    """The hand-offs of the runtime run whose requests ended as `outcomes`."""
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
    gaps = (arrival, dispatch, completion)
    a, d, c = (_median(g) for g in gaps)
    return HandOff(a, d, c, tuple(len(g) for g in gaps))  # type: ignore[arg-type]


def fit_serving_scale(outcomes: Sequence[RequestOutcome], profile: Profile) -> dict[str, float]:
    """Per model, the median of latency / solo latency (`profile`'s) over the batches of a
    run that never co-located them (one slot); models with fewer than MIN_SAMPLES
    batches are left out."""
    ratios: dict[str, list[float]] = {}
    seen: set[int] = set()
    for o in outcomes:
        if o.batch_id is None or o.batch_id in seen or o.start is None or o.end is None:
            continue
        if o.status == "failed" or o.batch_size is None or o.model not in profile.models:
            continue
        seen.add(o.batch_id)
        solo = profile.solo_latency(o.model, o.batch_size)
        ratios.setdefault(o.model, []).append((o.end - o.start) / solo)
    return {m: median(r) for m, r in sorted(ratios.items()) if len(r) >= MIN_SAMPLES}


def with_handoff(spec: DeviceSpec, handoff: HandOff) -> DeviceSpec:
    """`spec` with its law's hand-offs set to `handoff`'s."""
    return replace(spec, law=replace(spec.law, **handoff.delays()))


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
