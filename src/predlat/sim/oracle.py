"""The oracle: a forecaster that reads the simulated device's ground truth.

It knows the law (pair slowdowns, time-sharing) and every running batch's true remaining
work (noise included), and plays the running set forward exactly: with no further
dispatch, its forecast ends are the true ends. A candidate's own noise is drawn only
when it is submitted, so candidates are forecast at their mean (noise-free) work; the
oracle is exact for everything already running. The scheduler plans with its mean
(quantile = mean): the upper bound predictors are measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

from predlat.devices.simulated import CostFn, SimulatedDevice
from predlat.predict.forecast import ForecastEnd, RunningBatch
from predlat.scheduling.policies import Policy
from predlat.traces.records import BatchRecord

ORACLE = Policy(
    "oracle",
    predictor="solo",  # unused: the cluster builds an OracleForecaster instead
    one_at_a_time=False,
    summary="co-locate; forecasts from the simulator's true law and remaining work",
)


class OracleForecaster:
    def __init__(self, device: SimulatedDevice, cost: CostFn) -> None:
        self.device = device
        self.cost = cost
        self._running: dict[int, RunningBatch] = {}

    def on_dispatch(self, batch: RunningBatch, predicted_latency: float | None = None) -> None:
        self._running[batch.batch_id] = batch

    def release(self, record: BatchRecord) -> float | None:
        self._running.pop(record.batch_id, None)
        return None

    def learn(self, record: BatchRecord, predicted: float | None = None) -> None:
        return None

    def forecast(
        self, now: float, candidates: Sequence[RunningBatch] = ()
    ) -> dict[int, ForecastEnd]:
        true_work = self.device.remaining_work()
        jobs: list[tuple[int, str, tuple[float, float], float]] = []
        for b in [*self._running.values(), *candidates]:
            solo, c, m = self.cost(b.model, b.batch_size)
            jobs.append((b.batch_id, b.model, (c, m), true_work.get(b.batch_id, solo)))
        ends = play_forward(self.device, jobs, now)
        return {bid: ForecastEnd(t, t) for bid, t in ends.items()}


def play_forward(
    device: SimulatedDevice,
    jobs: list[tuple[int, str, tuple[float, float], float]],
    now: float,
) -> dict[int, float]:
    """End times of `jobs` (batch id, model, demand, remaining work) run together under
    the device's law from `now`, with nothing else added."""
    law = device.law
    left = {bid: (model, demand, work) for bid, model, demand, work in jobs}
    ends: dict[int, float] = {}
    t = now
    while left:
        n = len(left)
        share = max(1.0, n / law.cores) if law.cores else 1.0
        rates = {}
        for bid, (model, demand, _) in left.items():
            s = 1.0
            for other, (om, od, _) in left.items():
                if other != bid:
                    s += law.pair_of(model, demand, om, od)
            rates[bid] = 1.0 / (s * share)
        first = min(left, key=lambda b: (left[b][2] / rates[b], b))
        dt = left[first][2] / rates[first]
        t += dt
        for bid, (model, demand, work) in list(left.items()):
            left[bid] = (model, demand, max(0.0, work - rates[bid] * dt))
        ends[first] = t
        del left[first]
    return ends
