"""Measured tables: the noise and hand-offs a simulated device draws, their fits on
served batches and gaps (recovering known tails), and device.json old and new."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from predlat.devices.base import BatchJob
from predlat.devices.sim_law import InterferenceLaw, QuantileTable, seeded_uniform
from predlat.devices.simulated import SimulatedDevice, VirtualClock
from predlat.errors import ConfigError
from predlat.scheduling.policies import get_policy
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.scheduler import Scheduler
from predlat.sim import SyntheticModel, synthetic_profile
from predlat.sim.calibrate import calibrate
from predlat.sim.device_file import DeviceFileError, load_device, parse_device, save_device
from predlat.sim.handoff import fit_handoff
from predlat.sim.replay import random_colocation
from predlat.sim.simulator import Simulation, profile_cost
from predlat.sim.tail import PROBS, fit_noise_table, with_served_noise

PAIRS = {("small", "small"): 0.15, ("large", "medium"): 0.4, ("medium", "large"): 0.25}


def _skewed_row(spread: float, stall_p: float, stall_mean: float) -> list[float]:
    """Quantiles (at PROBS) of a narrow body plus, now and then, a long stall: the shape
    a busy host gives batches (a log-normal of the same spread has no such tail)."""
    rng = np.random.default_rng(0)
    n = 200_000
    body = rng.normal(0.0, spread, n)
    stall = np.where(rng.random(n) < stall_p, rng.exponential(stall_mean, n), 0.0)
    # the top: a few hundred batches' largest, not 200,000's (draws past p99 spread
    # evenly up to it, and a far maximum would make every sample's p99 a lottery)
    return list(np.quantile(body + stall, [*PROBS[:-1], 0.998]))


TRUE_TABLE = QuantileTable.of(PROBS, [_skewed_row(0.03, 0.15, 0.3), _skewed_row(0.05, 0.25, 0.5)])


def _device(table: QuantileTable | None, sigma: float = 0.05):
    spec = load_device("cpu4")
    law = replace(
        spec.law,
        pairs=PAIRS,
        cores=2,
        base=0.05,
        compute=0.0,
        memory=0.0,
        noise_sigma=sigma,
        noise_per_corunner=0.0,
        noise_table=table,
    )
    return replace(spec, law=law)


def test_a_table_draw_is_its_rows_inverse_cdf():
    table = QuantileTable.of((0.0, 0.5, 1.0), [(-0.1, 0.0, 0.5), (-0.2, 0.0, 1.0)])
    assert table.quantile(0.25, 0) == pytest.approx(-0.05)
    assert table.quantile(0.75, 1) == pytest.approx(0.5)
    assert table.quantile(0.75, 5) == pytest.approx(0.5)  # past the last row: the last
    assert table.quantile(1.0, 0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("probs", "rows"),
    [((0.0, 1.0), ()), ((0.1, 1.0), ((0.0, 1.0),)), ((0.0, 1.0), ((1.0, 0.0),))],
)
def test_a_bad_table_is_refused(probs, rows):
    with pytest.raises(ConfigError, match="quantile table"):
        QuantileTable.of(probs, rows).validate()


def test_the_device_draws_a_batchs_work_from_the_table():
    spec = _device(TRUE_TABLE)
    device = SimulatedDevice(spec.cost(), 2, spec.law, seed=7)
    solo = spec.cost()("small", 4)[0]
    for batch_id, k in ((0, 0), (1, 1), (2, 3)):
        want = solo * math.exp(TRUE_TABLE.quantile(seeded_uniform(7, batch_id), k))
        assert device.solo_work(batch_id, "small", 4, k) == pytest.approx(want)
        assert device.solo_work(batch_id, "small", 4, k) == device.solo_work(
            batch_id, "small", 4, k
        )


def _assert_recovers(table: QuantileTable | None) -> None:
    assert table is not None and len(table.rows) >= 2
    for k in (0, 1):
        got, want = table.rows[k], TRUE_TABLE.rows[k]
        for u in (0.1, 0.5, 0.9, 0.95, 0.99):
            i = PROBS.index(u)
            # the work factor at u within 10%, 20% at p99 (it rests on a dozen batches)
            tol = 0.2 if u == 0.99 else 0.1
            assert math.exp(got[i] - want[i]) == pytest.approx(1.0, abs=tol), (k, u)


def test_the_fit_recovers_a_known_tail_from_records_simulated_with_it():
    spec = _device(TRUE_TABLE)
    records = random_colocation(spec, 2, 4000, seed=3, gap_s=0.1)
    _assert_recovers(fit_noise_table(records, spec))


def test_calibration_measures_the_noise_on_served_batches_not_the_trace():
    """The law comes from a trace with log-normal noise; the noise from served batches
    with a tail (what validate's hand-off probe gives)."""
    trace = random_colocation(_device(None), 2, 2000, seed=1, gap_s=0.02)
    served = random_colocation(_device(TRUE_TABLE), 2, 4000, seed=5, gap_s=0.1)
    spec = _device(None)
    cal = with_served_noise(calibrate(trace, spec.profile(cv=0.0)), served)
    assert cal.served == len(served)
    assert cal.spec.law.pairs[("large", "medium")] == pytest.approx(0.4, abs=0.05)
    _assert_recovers(cal.spec.law.noise_table)
    assert calibrate(trace, spec.profile(cv=0.0)).spec.law.noise_table is None
    few = with_served_noise(calibrate(trace, spec.profile(cv=0.0)), served[:10])
    assert few.spec.law.noise_table is None and few.served == 0


def test_a_device_file_with_a_table_is_version_3_and_round_trips(tmp_path):
    spec = _device(TRUE_TABLE)
    path = save_device(spec, tmp_path / "d.json")
    data = json.loads(path.read_text())
    assert data["version"] == 3
    assert len(data["noise"]["table"]["log_factor"]) == 2
    back = load_device(path)
    assert back.law.noise_table == TRUE_TABLE


def test_older_device_files_still_load_without_a_table(tmp_path):
    data = _device(None).to_json()
    assert data["version"] == 1 and "table" not in data["noise"]
    assert parse_device(data).law.noise_table is None
    assert parse_device({**data, "version": 2}).law.noise_table is None
    with_table = _device(TRUE_TABLE).to_json()
    with pytest.raises(DeviceFileError, match=r"noise\.table: needs version 3"):
        parse_device({**with_table, "version": 2})


@pytest.mark.parametrize(
    "table",
    [
        {"probs": [0, 1]},
        {"probs": [0, 1], "log_factor": [[0.2, 0.1]]},
        {"probs": [0, "x"], "log_factor": [[0, 1]]},
    ],
)
def test_a_bad_table_in_a_device_file_names_the_field(table):
    data = _device(TRUE_TABLE).to_json()
    data["noise"]["table"] = table
    with pytest.raises(DeviceFileError, match=r"noise\.table"):
        parse_device(data)


# -- measured hand-offs ---------------------------------------------------------------------
MS = 1e-3
STALLS = QuantileTable.of((0.0, 0.5, 0.99, 1.0), [(0.2 * MS, 0.4 * MS, 4 * MS, 6 * MS)])


def test_each_batch_draws_its_hand_offs_from_the_tables():
    law = InterferenceLaw(
        base=0.0,
        noise_sigma=0.0,
        dispatch_s=0.4 * MS,
        completion_s=0.3 * MS,
        dispatch_table=STALLS,
        completion_table=STALLS,
    )
    dev = SimulatedDevice(lambda m, n: (0.010, 0.5, 0.5), 2, law, seed=3)
    dev.load("a")
    seen = []
    for i in range(20):
        dev.clock.now = float(i)
        dev.submit(0, BatchJob(i, "a", 1), lambda r: seen.append((dev.clock.now, r)))
        dev.advance(i + 0.5)
    for at, r in seen:
        dispatch = STALLS.quantile(seeded_uniform(3, r.batch_id + (1 << 40)))
        done = STALLS.quantile(seeded_uniform(3, r.batch_id + (2 << 40)))
        assert r.start == pytest.approx(r.batch_id + dispatch)
        assert r.end == pytest.approx(r.start + 0.010)
        assert at == pytest.approx(r.end + done)
    assert len({round(r.start % 1, 9) for _, r in seen}) > 10  # drawn, not one constant


PROFILE = synthetic_profile({"m": SyntheticModel(0.010, 0.002)}, cv=0.0)


def _simulate(law: InterferenceLaw, arrivals: list[float]):
    clock = VirtualClock()
    device = SimulatedDevice(profile_cost(PROFILE), 1, law, clock=clock)
    device.load("m")
    policy = get_policy("oblivious")
    scheduler = Scheduler(["m"], 1, policy.make_forecaster(PROFILE), PROFILE, policy)
    requests = [Request(i, "m", t, t + 1.0, Priority.LOW) for i, t in enumerate(arrivals)]
    return Simulation([device], [scheduler], clock).run(requests)


def test_fit_handoff_measures_the_gaps_tails():
    law = replace(
        InterferenceLaw(base=1.0, compute=0.0, memory=0.0, noise_sigma=0.0),
        arrival_s=0.15 * MS,
        dispatch_s=0.4 * MS,
        completion_s=0.3 * MS,
        dispatch_table=STALLS,
        completion_table=STALLS,
    )
    arrivals = [0.025 * (i // 2) + 0.002 * (i % 2) for i in range(400)]
    fitted = fit_handoff(_simulate(law, arrivals).outcomes)
    for table in (fitted.dispatch_table, fitted.completion_table):
        assert table is not None
        for u in (0.5, 0.9, 0.99):
            assert table.quantile(u) == pytest.approx(STALLS.quantile(u), rel=0.25), u
    assert fitted.dispatch_s == pytest.approx(0.4 * MS, rel=0.1)  # the median stays
    assert fit_handoff(_simulate(law, arrivals[:20]).outcomes).dispatch_table is None
    untabled = fit_handoff(_simulate(law, arrivals).outcomes, tables=False)
    assert untabled.dispatch_table is None and untabled.completion_table is None
    assert untabled.dispatch_s == fitted.dispatch_s  # the medians are the same


def test_hand_off_tables_round_trip_in_device_json(tmp_path):
    spec = _device(None)
    spec = replace(spec, law=replace(spec.law, dispatch_s=0.4 * MS, dispatch_table=STALLS))
    data = spec.to_json()
    assert data["version"] == 3
    assert data["handoff"]["dispatch_table"]["seconds"] == list(STALLS.rows[0])
    back = load_device(save_device(spec, tmp_path / "d.json"))
    assert back.law.dispatch_table == STALLS and back.law.completion_table is None
    with pytest.raises(DeviceFileError, match=r"handoff\.dispatch_table: needs version 3"):
        parse_device({**data, "version": 2})
