"""The serving host's hand-offs on a simulated device: exact timing, device.json,
and fitting them back from a run's outcomes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from predlat.devices.base import BatchJob
from predlat.devices.simulated import InterferenceLaw, SimulatedDevice, VirtualClock
from predlat.scheduling.policies import get_policy
from predlat.scheduling.request import Priority, Request
from predlat.scheduling.scheduler import Scheduler
from predlat.sim import SyntheticModel, synthetic_profile
from predlat.sim.calibrate import calibrate
from predlat.sim.device_file import DeviceFileError, load_device, parse_device, save_device
from predlat.sim.handoff import HandOff, fit_handoff, with_handoff
from predlat.sim.replay import random_colocation
from predlat.sim.simulator import Simulation, profile_cost

MS = 1e-3
# Every co-runner doubles a batch's time; no noise: every end is exact.
DOUBLING = InterferenceLaw(base=1.0, compute=0.0, memory=0.0, noise_sigma=0.0)


def cost(model: str, n: int) -> tuple[float, float, float]:
    return (0.010 * n, 0.5, 0.5)


def _device(law: InterferenceLaw) -> tuple[SimulatedDevice, list]:
    dev = SimulatedDevice(cost, 2, law)
    dev.load("a")
    return dev, []


def test_a_batch_starts_after_the_dispatch_delay_and_reports_after_the_completion_delay():
    dev, seen = _device(replace(DOUBLING, dispatch_s=2 * MS, completion_s=3 * MS))
    dev.clock.now = 1.0
    dev.submit(0, BatchJob(0, "a", 1), lambda r: seen.append((dev.clock.now, r)))
    assert dev.is_busy(0) and dev.running() == 1  # the slot is held from the submit
    assert dev.next_event() == pytest.approx(1.002)
    dev.advance(1.0125)  # started at 1.002, ended at 1.012: not reported yet
    assert seen == [] and not dev.is_busy(0)
    dev.advance(1.0149)
    assert seen == []
    dev.advance(2.0)
    ((at, result),) = seen
    assert (result.start, result.end, at) == (
        pytest.approx(1.002),
        pytest.approx(1.012),
        pytest.approx(1.015),
    )
    assert dev.busy_time == pytest.approx(0.010)


def test_delayed_starts_meet_co_runners_at_their_real_start():
    # a: submitted at 0, starts 2 ms later; b: submitted at 4 ms, starts at 6 ms.
    # a runs alone 4 ms (6 ms of work left), then both at half speed: a ends at
    # 6 + 12 = 18 ms, when b has done 6 of its 10 ms; b ends alone at 22 ms.
    dev, done = _device(replace(DOUBLING, dispatch_s=2 * MS, completion_s=1 * MS))
    dev.submit(0, BatchJob(0, "a", 1), done.append)
    dev.clock.now = 4 * MS
    dev.advance(4 * MS)
    dev.submit(1, BatchJob(1, "a", 1), done.append)
    dev.advance(1.0)
    spans = {r.batch_id: (r.start, r.end) for r in done}
    assert spans[0] == (pytest.approx(2 * MS), pytest.approx(18 * MS))
    assert spans[1] == (pytest.approx(6 * MS), pytest.approx(22 * MS))
    assert dev.clock.now == pytest.approx(23 * MS)  # the last report, 1 ms after b's end


def test_without_hand_offs_the_callback_comes_at_the_end():
    dev, seen = _device(DOUBLING)
    dev.submit(0, BatchJob(0, "a", 2), lambda r: seen.append((dev.clock.now, r.start, r.end)))
    assert dev.next_event() == pytest.approx(0.020)
    dev.advance(1.0)
    assert seen == [(0.020, 0.0, 0.020)]


PROFILE = synthetic_profile({"m": SyntheticModel(0.010, 0.002)}, cv=0.0)


def _simulate(law: InterferenceLaw, arrivals: list[float], slots: int = 2):
    clock = VirtualClock()
    device = SimulatedDevice(profile_cost(PROFILE), slots, law, clock=clock)
    device.load("m")
    policy = get_policy("oblivious")
    scheduler = Scheduler(["m"], slots, policy.make_forecaster(PROFILE), PROFILE, policy)
    requests = [Request(i, "m", t, t + 1.0, Priority.LOW) for i, t in enumerate(arrivals)]
    return Simulation([device], [scheduler], clock).run(requests)


def test_the_simulated_scheduler_sees_each_hand_off():
    law = replace(DOUBLING, arrival_s=0.5 * MS, dispatch_s=0.3 * MS, completion_s=0.2 * MS)
    # one slot: the second request waits for the first batch's end to be reported
    result = _simulate(law, [1.0, 1.001], slots=1)
    first, second = result.outcomes
    assert first.dispatch == pytest.approx(1.0005)  # decided when the arrival got there
    assert first.start == pytest.approx(1.0008)
    assert first.end == pytest.approx(1.0108)
    assert second.dispatch == pytest.approx(1.0110)  # the end, reported 0.2 ms later
    assert second.start == pytest.approx(1.0113)
    assert second.end == pytest.approx(1.0213)


def test_fit_recovers_known_hand_offs_from_a_run():
    law = replace(DOUBLING, arrival_s=0.15 * MS, dispatch_s=0.3 * MS, completion_s=0.25 * MS)
    # pairs 2 ms apart on one slot: the first meets an idle slot, the second waits for
    # the first's end
    arrivals = [0.025 * (i // 2) + 0.002 * (i % 2) for i in range(60)]
    fitted = fit_handoff(_simulate(law, arrivals, slots=1).outcomes)
    assert fitted.arrival_s == pytest.approx(law.arrival_s, abs=1e-9)
    assert fitted.dispatch_s == pytest.approx(law.dispatch_s, abs=1e-9)
    assert fitted.completion_s == pytest.approx(law.completion_s, abs=1e-9)
    assert min(fitted.samples) >= 5
    none = fit_handoff(_simulate(DOUBLING, arrivals, slots=1).outcomes)
    assert (none.arrival_s, none.dispatch_s, none.completion_s) == (0.0, 0.0, 0.0)


def test_calibration_carries_the_hand_offs_into_device_json(tmp_path):
    spec = load_device("cpu4")
    records = random_colocation(spec, 2, 200, seed=1, gap_s=0.02)
    handoff = HandOff(0.1 * MS, 0.3 * MS, 0.2 * MS, (10, 10, 10))
    cal = calibrate(records, spec.profile(cv=0.0), slots=2, handoff=handoff)
    assert (cal.spec.law.arrival_s, cal.spec.law.dispatch_s, cal.spec.law.completion_s) == (
        0.1 * MS,
        0.3 * MS,
        0.2 * MS,
    )
    path = save_device(cal.spec, tmp_path / "device.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2
    assert data["handoff"] == {
        "arrival_s": 0.1 * MS,
        "dispatch_s": 0.3 * MS,
        "completion_s": 0.2 * MS,
    }
    assert load_device(path).law == cal.spec.law
    plain = calibrate(records, spec.profile(cv=0.0), slots=2)
    assert plain.spec.law == with_handoff(cal.spec, HandOff()).law


def test_a_device_file_without_hand_offs_is_version_1_and_loads_with_none():
    spec = load_device("cpu4")
    data = spec.to_json()
    assert data["version"] == 1 and "handoff" not in data  # older readers still load it
    law = parse_device(data).law
    assert (law.arrival_s, law.dispatch_s, law.completion_s) == (0.0, 0.0, 0.0)
    with pytest.raises(DeviceFileError, match="handoff: needs version 2"):
        parse_device({**data, "handoff": {"dispatch_s": 0.001}})
    bad = {**data, "version": 2, "handoff": {"dispatch_s": -1.0}}
    with pytest.raises(DeviceFileError, match=r"handoff\.dispatch_s"):
        parse_device(bad)
