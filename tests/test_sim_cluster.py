"""Clusters of simulated devices: exact progress arithmetic, determinism, accounting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from predlat.devices.base import BatchJob
from predlat.devices.simulated import InterferenceLaw, SimulatedDevice
from predlat.scheduling.routing import RouteRequest, rank
from predlat.sim.arrivals import synthetic_requests
from predlat.sim.cluster import CLUSTER_ROUTES, build_cluster
from predlat.sim.device_file import DeviceSpec, load_device
from predlat.sim.oracle import OracleForecaster
from predlat.traces.collect import device_capacity


def test_co_runner_leaving_mid_batch_speeds_the_other_up():
    # a: 1.0 s of work, b: 0.2 s; each slows the other by 50 %, no noise.
    law = InterferenceLaw(
        base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0, pairs={("a", "b"): 0.5, ("b", "a"): 0.5}
    )
    solo = {"a": 1.0, "b": 0.2}
    dev = SimulatedDevice(lambda m, n: (solo[m], 0.5, 0.5), 2, law)
    dev.load("a")
    dev.load("b")
    ends = {}
    dev.submit(0, BatchJob(0, "a", 1), lambda r: ends.__setitem__("a", r.end))
    dev.submit(1, BatchJob(1, "b", 1), lambda r: ends.__setitem__("b", r.end))
    dev.close()
    # both at rate 1/1.5: b ends at 0.3; a did 0.2 of work by then, then 0.8 alone.
    assert ends["b"] == pytest.approx(0.3)
    assert ends["a"] == pytest.approx(0.3 + 0.8)


def test_time_sharing_cores_and_a_late_start():
    law = InterferenceLaw(base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0, cores=1)
    dev = SimulatedDevice(lambda m, n: (1.0, 0.0, 0.0), 2, law)
    dev.load("m")
    ends = {}
    dev.submit(0, BatchJob(0, "m", 1), lambda r: ends.__setitem__(0, r.end))
    dev.advance(0.5)
    dev.clock.now = 0.5
    dev.submit(1, BatchJob(1, "m", 1), lambda r: ends.__setitem__(1, r.end))
    dev.close()
    # 0.5 alone, then both at rate 1/2: batch 0 needs 0.5 more -> ends at 1.5;
    # batch 1 did 0.5 by then, 0.5 alone -> 2.0
    assert ends == {0: pytest.approx(1.5), 1: pytest.approx(2.0)}


def _run(policy="predlat", route="round-robin", devices=3, n=3000, seed=0, specs=None):
    specs = specs or [load_device("gpu")]
    sim = build_cluster(specs, devices, policy, route=route, seed=seed, train_batches=100)
    rates = {m: 1.0 for m in specs[0].models}
    scale = 600.0 * devices / len(rates)
    reqs = synthetic_requests(
        {m: r * scale for m, r in rates.items()}, n, lambda m: 0.1, seed=seed, hp_frac=0.3
    )
    stats, _ = sim.run_stream(reqs, keep=True)
    return sim, stats


@pytest.mark.parametrize("route", CLUSTER_ROUTES)
def test_every_request_ends_exactly_once(route):
    sim, stats = _run(route=route)
    ids = sorted(o.request_id for o in stats.outcomes)
    assert ids == list(range(3000))
    assert sum(stats.status.values()) == 3000
    assert sim.busy_slot_s() > 0


def test_a_time_shared_device_ends_without_stale_events_firing():
    # Every arm used to push a heap entry, and the streaming loop fired the heap's top
    # without skipping stale ones once arrivals were over: on cpu4 that never ended.
    spec = load_device("cpu4")
    sim = build_cluster([spec], 1, "oblivious", train_batches=0)
    deadline = {m: 10 * c.latency(1) for m, c in spec.models.items()}
    rate = 0.9 * device_capacity(spec.profile(), sorted(spec.models), spec.slots) / 3
    reqs = synthetic_requests(dict.fromkeys(spec.models, rate), 300, deadline.get, hp_frac=0.3)
    stats, _ = sim.run_stream(reqs)
    assert stats.requests == 300


def test_streamed_outcomes_count_as_kept_ones():
    # Without keep=True a finished request is counted without building its outcome:
    # the figures must be those of the outcomes a kept run builds.
    kept = _run(seed=2)[1]
    sim = build_cluster([load_device("gpu")], 3, "predlat", seed=2, train_batches=100)
    reqs = synthetic_requests(
        dict.fromkeys(load_device("gpu").models, 600.0), 3000, lambda m: 0.1, seed=2, hp_frac=0.3
    )
    lean, _ = sim.run_stream(reqs)
    assert lean.outcomes == []
    assert lean.summary(1.0, 1) == kept.summary(1.0, 1)


def test_synthetic_arrivals_are_python_floats():
    # NumPy scalars would leak into the clock and every time derived from it, where
    # their arithmetic costs several times a float's.
    reqs = list(synthetic_requests({"a": 10.0}, 5, lambda m: 0.1, process="bursty"))
    assert all(type(r.arrival) is float and type(r.deadline) is float for r in reqs)


def test_deterministic_under_a_seed():
    a = _run(seed=3)[1].summary(1.0, 1)
    b = _run(seed=3)[1].summary(1.0, 1)
    c = _run(seed=4)[1].summary(1.0, 1)
    assert a == b
    assert a != c


def _slowed(spec: DeviceSpec, factor: float) -> DeviceSpec:
    """`spec` renamed "slow", every solo time `factor` times longer."""
    models = {
        m: replace(c, solo_s={n: factor * s for n, s in c.solo_s.items()})
        for m, c in spec.models.items()
    }
    return replace(spec, name="slow", models=models)


def test_mixed_devices_and_oracle():
    gpu = load_device("gpu")
    slow = _slowed(gpu, 2)
    sim, stats = _run(policy="oracle", route="predlat", devices=4, specs=[gpu, slow])
    assert len(stats.outcomes) == 3000
    names = {d.name.split("#")[0] for d in sim.devices}
    assert names == {"gpu", "slow"}
    s = stats.summary(sim.busy_slot_s(), sim.slots())
    assert s["met_frac"] > 0.5


def test_the_predlat_route_from_views_picks_what_ranking_forecasts_picks():
    # Devices of two speeds under overload: some arrivals find a device forecast to
    # meet the deadline, some none. On each, the views' choice must be rank's.
    gpu = load_device("gpu")
    sim = build_cluster([gpu, _slowed(gpu, 3)], 6, "predlat", route="predlat", train_batches=100)
    from_views = sim._route
    seen = {"met": 0, "late": 0}

    def checked(request, n):
        chosen = from_views(request, n)
        now = sim.clock.now
        assert chosen == sim._ranked(request, now)
        forecasts = [sim._forecast(d, now) for d in range(6)]
        ask = RouteRequest(request.model, request.size, request.priority, request.deadline - now)
        seen["met" if rank(forecasts, ask).best is not None else "late"] += 1
        return chosen

    sim._route = checked
    rate = 3.0 * 6 * device_capacity(gpu.profile(), sorted(gpu.models), gpu.slots) / 2 / 3
    deadline = {m: 2 * c.latency(1) for m, c in gpu.models.items()}
    reqs = synthetic_requests(dict.fromkeys(gpu.models, rate), 4000, deadline.get, hp_frac=0.3)
    stats, _ = sim.run_stream(reqs)
    assert stats.requests == 4000
    assert seen["met"] > 500 and seen["late"] > 500, seen


def test_predlat_route_prefers_the_faster_device():
    gpu = load_device("gpu")
    slow = _slowed(gpu, 5)
    _, stats = _run(route="predlat", devices=2, specs=[gpu, slow], n=1000)
    on_fast = sum(1 for r in stats.records if r.device == 0)
    assert on_fast > len(stats.records) / 2


def _noisy_device_and_oracle(
    slots: int, seed: int, sigma: float, per_corunner: float
) -> tuple[SimulatedDevice, OracleForecaster]:
    """A device running model `a` (0.1 s a row alone, 40 % slower beside itself, noisy)
    and the oracle that reads its law."""
    law = InterferenceLaw(
        noise_sigma=sigma, noise_per_corunner=per_corunner, pairs={("a", "a"): 0.4}
    )
    cost = lambda m, n: (0.1 * n, 0.5, 0.5)  # noqa: E731
    dev = SimulatedDevice(cost, slots, law, seed=seed)
    dev.load("a")
    return dev, OracleForecaster(dev, cost)


def test_oracle_knows_a_candidates_noisy_work_before_it_is_submitted():
    from predlat.predict.forecast import RunningBatch

    dev, oracle = _noisy_device_and_oracle(slots=2, seed=7, sigma=0.3, per_corunner=0.1)
    ends = {}
    first = RunningBatch(0, "a", 2, 0.0)
    oracle.on_dispatch(first)
    dev.submit(0, BatchJob(0, "a", 2), lambda r: ends.__setitem__(0, r.end))
    dev.clock.now = 0.05  # the driver owns the clock
    second = RunningBatch(1, "a", 1, 0.05)
    forecast = oracle.forecast(0.05, (second,))
    oracle.on_dispatch(second)
    dev.submit(1, BatchJob(1, "a", 1), lambda r: ends.__setitem__(1, r.end))
    dev.close()
    # Noise is fixed by (seed, batch id): the forecast made before submit is exact.
    assert forecast[0].mean == pytest.approx(ends[0])
    assert forecast[1].mean == pytest.approx(ends[1])
    assert dev.solo_work(1, "a", 1, 1) == dev.solo_work(1, "a", 1, 1) != 0.1


def test_policy_objects_build_the_same_cluster_as_names():
    from predlat.scheduling.policies import get_policy
    from predlat.sim.oracle import ORACLE, OracleForecaster

    gpu = load_device("gpu")
    by_object = build_cluster([gpu], 1, ORACLE)
    assert isinstance(by_object.schedulers[0].forecaster, OracleForecaster)
    mean = build_cluster([gpu], 1, get_policy("coarse"), quantile=None, train_batches=0)
    assert not mean.schedulers[0].policy.plans_at_quantile


def test_oracle_counts_batches_dispatched_in_one_decision_before_any_is_submitted():
    from predlat.predict.forecast import RunningBatch

    dev, oracle = _noisy_device_and_oracle(slots=3, seed=3, sigma=0.2, per_corunner=0.3)
    # One scheduling event decides two dispatches, then forecasts a third candidate,
    # before the driver submits any of them (in dispatch order).
    batches = [RunningBatch(i, "a", 1 + i, 0.0) for i in range(3)]
    oracle.on_dispatch(batches[0])
    oracle.on_dispatch(batches[1])
    forecast = oracle.forecast(0.0, (batches[2],))
    ends = {}
    for slot, b in enumerate(batches):
        job = BatchJob(b.batch_id, "a", b.batch_size)
        dev.submit(slot, job, lambda r: ends.__setitem__(r.batch_id, r.end))
    dev.close()
    for b in batches:
        assert forecast[b.batch_id].mean == pytest.approx(ends[b.batch_id])
