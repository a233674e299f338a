"""The oracle: a forecaster that reads the simulated device's ground truth.

It knows the law (pair slowdowns, time-sharing), every running batch's true remaining
work and each candidate's true work (noise included: the simulated device fixes a
batch's noise by its id, `SimulatedDevice.solo_work`), and plays them forward exactly:
with no further dispatch, its forecast ends are the true ends. The scheduler plans with
its mean (quantile = mean). What it cannot know is the work dispatched later, which
slows what is running; the Forecaster's fill anticipates that, so on a device with strong
interference a predictor can beat this oracle's SLO capacity (it is exact about the
present, not an upper bound). Planning at a conformal quantile of its own residuals, even
after a median correction, did worse: the bias from later co-runners depends on the
queue, which no single margin follows.
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
        device = self.device
        true_work = device.remaining_work()
        # Batches not on the device yet (dispatched in this decision, or candidates) are
        # submitted in order, each beside every batch before it: that count sets its noise.
        beside = device.running()
        jobs: list[tuple[int, str, tuple[float, float], float]] = []
        for b in [*self._running.values(), *candidates]:
            _, c, m = self.cost(b.model, b.batch_size)
            work = true_work.get(b.batch_id)
            if work is None:
                work = device.solo_work(b.batch_id, b.model, b.batch_size, beside)
                beside += 1
            jobs.append((b.batch_id, b.model, (c, m), work))
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
