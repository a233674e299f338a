"""Feature extraction on synthetic timelines with known answers."""

from __future__ import annotations

import math

import pytest

from predlat.predict.colocation import DeviceLoad, coarse_load, ewma_loads
from predlat.predict.ewma_history import EwmaHistory
from predlat.predict.features import Design, FeatureMap, count_integral, fine_load
from predlat.profiling.profile import BatchProfile, LatencyStats, MachineInfo, Profile
from predlat.traces.records import BatchRecord, Overlap, attach_timelines


def tiny_profile() -> Profile:
    """Two models, two sizes; compute_util mean 0.5 and memory_util mean 0.75, so the
    normalised utilisations are easy to write down."""
    machine = MachineInfo("synthetic", 2, 1, "synthetic", {})
    table = {
        ("a", 1): (0.001, 0.2, 0.5),
        ("a", 2): (0.002, 0.4, 0.5),
        ("b", 1): (0.004, 0.6, 1.0),
        ("b", 2): (0.008, 0.8, 1.0),
    }
    profile = Profile(machine=machine)
    for (model, n), (lat, cu, mu) in table.items():
        profile.models.setdefault(model, {})[n] = BatchProfile(
            LatencyStats(lat, lat, 0.0, 1), {"compute_util": cu, "memory_util": mu}
        )
    return profile


@pytest.fixture
def fmap() -> FeatureMap:
    return FeatureMap(tiny_profile())


def test_feature_map_normalises_by_profile_means(fmap):
    assert fmap.co_vec("a", 1) == pytest.approx((1.0, 0.4, 2 / 3))
    assert fmap.co_vec("b", 2) == pytest.approx((1.0, 1.6, 4 / 3))
    s = fmap.self_vec("b", 2)
    logs = [math.log(x) for x in (0.001, 0.002, 0.004, 0.008)]
    mean = sum(logs) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / 4)
    assert s[:3] == pytest.approx((1.0, 1.6, 4 / 3))
    assert s[3] == pytest.approx((math.log(0.008) - mean) / std)
    assert fmap.solo("a", 2) == pytest.approx(0.002)


def batch_with_timeline() -> BatchRecord:
    # Batch over [0, 10): X (b,1) departs at 4, Z (b,2) is there over [2, 5), Y (a,2)
    # arrives at 6 and stays to the end.
    timeline = (
        Overlap(1, "b", 1, 0.0, 4.0),
        Overlap(3, "b", 2, 2.0, 5.0),
        Overlap(2, "a", 2, 6.0, 10.0),
    )
    return BatchRecord(0, "a", 1, 0, 0.0, 0.0, 10.0, timeline)


def test_fine_load_is_time_weighted_with_arrivals_and_departures(fmap):
    n, cu, mu, ov = fine_load(batch_with_timeline(), fmap)
    assert n == pytest.approx((4 + 3 + 4) / 10)
    assert cu == pytest.approx((1.2 * 4 + 1.6 * 3 + 0.8 * 4) / 10)
    assert mu == pytest.approx((4 / 3 * 4 + 4 / 3 * 3 + 2 / 3 * 4) / 10)
    # 2 cores, 1 thread per batch: oversub(2 co-runners) = 0.5 on [2, 4), 0 elsewhere.
    assert ov == pytest.approx(0.5 * 2 / 10)


def test_coarse_sees_only_co_runners_present_at_start(fmap):
    assert coarse_load(batch_with_timeline(), fmap) == pytest.approx((1.0, 1.2, 4 / 3, 0.0))
    alone = BatchRecord(0, "a", 1, 0, 0.0, 0.0, 1.0)
    assert coarse_load(alone, fmap) == (0.0, 0.0, 0.0, 0.0)
    assert fine_load(alone, fmap) == (0.0, 0.0, 0.0, 0.0)


def test_count_integral_of_empty_and_nested_timelines():
    def square(n: int) -> float:
        return n * n

    assert count_integral((), square) == 0.0
    nested = (Overlap(1, "a", 1, 0.0, 4.0), Overlap(2, "a", 1, 1.0, 2.0))
    assert count_integral(nested, square) == pytest.approx(1 + 4 + 2)
    # count: 1 on [0,2), 2 on [2,4), 1 on [4,5), 0 on [5,6), 1 on [6,10)
    timeline = batch_with_timeline().timeline
    assert count_integral(timeline, square) == pytest.approx(2 * 1 + 2 * 4 + 1 * 1 + 0 + 4 * 1)


def test_ewma_decays_with_known_value(fmap):
    tau = 1.0
    recs = attach_timelines(
        [
            BatchRecord(1, "b", 1, 0, 0.0, 0.0, 1.0),
            BatchRecord(2, "a", 1, 0, 2.0, 2.0, 3.0),
        ]
    )
    by_id = {r.batch_id: r for r in recs}
    loads = ewma_loads(recs, fmap, tau)
    weight = math.exp(-1.0) - math.exp(-2.0)  # batch 1 ran over [0, 1), seen from t = 2
    assert loads[2] == pytest.approx((weight, 1.2 * weight, 4 / 3 * weight, 0.0))
    assert loads[1] == (0.0, 0.0, 0.0, 0.0)
    history = EwmaHistory(fmap, tau)
    history.add(by_id[1])
    assert history.value(by_id[2]) == pytest.approx(loads[2])


def test_ewma_counts_batches_still_running_at_start(fmap):
    tau = 0.5
    recs = attach_timelines(
        [
            BatchRecord(1, "b", 1, 0, 0.0, 0.0, 5.0),
            BatchRecord(2, "a", 1, 0, 1.0, 1.0, 2.0),
        ]
    )
    loads = ewma_loads(recs, fmap, tau)
    assert loads[2][0] == pytest.approx(1.0 - math.exp(-1.0 / tau))
    # Streaming: batch 1 has not finished, so its start is unknown and assumed to be
    # half its solo latency (2 ms) before.
    history = EwmaHistory(fmap, tau)
    rec2 = next(r for r in recs if r.batch_id == 2)
    assert history.value(rec2)[0] == pytest.approx(1.0 - math.exp(-0.002 / tau))


def test_ewma_devices_do_not_mix(fmap):
    recs = attach_timelines(
        [
            BatchRecord(1, "b", 1, 0, 0.0, 0.0, 1.0, device=1),
            BatchRecord(2, "a", 1, 0, 2.0, 2.0, 3.0, device=0),
        ]
    )
    assert ewma_loads(recs, fmap, 1.0)[2] == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("n_load", [3, 4])
@pytest.mark.parametrize("interact", [False, True])
def test_design_parts_match_the_row(n_load, interact):
    design = Design(n_load, oversub=n_load == 4, interact=interact)
    assert len(design.names()) == design.dim
    w = [0.1 * (i + 1) * (-1) ** i for i in range(design.dim)]
    s = (1.0, 0.3, 1.7, -0.4)
    g = (2.0, 1.5, 0.7, 4.0)[:n_load]
    row = design.row(s, g)
    a, beta = design.parts(w, s)
    direct = sum(wi * xi for wi, xi in zip(w, row, strict=True))
    assert a + sum(b * x for b, x in zip(beta, g, strict=True)) == pytest.approx(direct)
    if interact:  # a memory-heavy batch feels co-runners' memory demand more
        _, beta_heavy = design.parts(w, (1.0, 0.3, 3.0, -0.4))
        assert beta_heavy[2] - beta[2] == pytest.approx(w[4 + n_load + 1] * (3.0 - 1.7))


def test_streaming_ewma_history_matches_the_exact_sweep():
    from predlat.predict.synthetic import SlowdownLaw, simulate_trace, synthetic_profile

    profile = synthetic_profile(seed=0)
    fmap = FeatureMap(profile)
    trace = simulate_trace(profile, SlowdownLaw(), slots=3, load=0.7, num_batches=1500, seed=3)
    tau = 0.01
    exact = ewma_loads(trace, fmap, tau)
    added: set[int] = set()
    history = EwmaHistory(fmap, tau)
    ordered = sorted(trace, key=lambda r: r.end)
    # A few completions reported out of order, as a real device may.
    for k in range(0, len(ordered) - 1, 50):
        ordered[k], ordered[k + 1] = ordered[k + 1], ordered[k]
    checked = 0
    for r in ordered:
        history.add(r)
        added.add(r.batch_id)
        # Streaming, the history knows every batch finished so far; compare where all
        # co-runners at the start have finished (their starts are then known).
        if all(o.batch_id in added for o in r.co_runners_at_start()):
            assert history.value(r) == pytest.approx(exact[r.batch_id], rel=1e-6, abs=1e-3)
            checked += 1
    assert checked > 300


def cpu_profile(cores: int = 2, threads: int = 1, accelerator: bool = False):
    profile = tiny_profile()
    profile.machine = MachineInfo("test", cores, threads, "cpu", {}, accelerator)
    return profile


def test_oversubscription_law_of_the_machine():
    ov = FeatureMap(cpu_profile()).oversub
    # 2 cores, 1 thread per batch: the cores are oversubscribed from 2 co-runners on.
    assert [ov(n) for n in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert [ov.at(n) for n in (0, 2, 100)] == [0.0, 0.5, 49.5]
    two_threads = FeatureMap(cpu_profile(threads=2)).oversub
    assert [two_threads(n) for n in range(3)] == [0.0, 1.0, 2.0]
    assert FeatureMap(cpu_profile(accelerator=True)).oversub is None
    assert FeatureMap(cpu_profile(), oversub=False).oversub is None


def test_oversub_is_the_exact_time_average_when_the_count_goes_0_2_1():
    fmap = FeatureMap(cpu_profile())
    # Batch over [0, 10): alone on [0, 3), two co-runners on [3, 6), one on [6, 10).
    timeline = (Overlap(1, "b", 1, 3.0, 10.0), Overlap(2, "a", 2, 3.0, 6.0))
    rec = BatchRecord(0, "a", 1, 0, 0.0, 0.0, 10.0, timeline)
    n, cu, mu, ov = fine_load(rec, fmap)
    assert ov == pytest.approx(0.5 * 3 / 10)  # oversub(2) = 0.5, for 3 s of 10
    assert n == pytest.approx(1.0)
    assert (cu, mu) == pytest.approx(((1.2 * 7 + 0.8 * 3) / 10, (4 / 3 * 7 + 2 / 3 * 3) / 10))
    # The same average count with one co-runner all along never oversubscribes the
    # cores: the linear count channel cannot tell the two apart, this one can.
    steady = BatchRecord(0, "a", 1, 0, 0.0, 0.0, 10.0, (Overlap(1, "b", 1, 0.0, 10.0),))
    assert fine_load(steady, fmap)[0] == pytest.approx(1.0)
    assert fine_load(steady, fmap)[3] == 0.0
    assert coarse_load(rec, fmap)[3] == 0.0  # alone at its start
    assert len(fine_load(rec, FeatureMap(cpu_profile(), oversub=False))) == 3


def test_ewma_of_oversub_has_known_value_streaming_and_exact():
    fmap = FeatureMap(cpu_profile())
    tau = 1.0
    # Device count: 1 on [0, 1), 2 on [1, 3), 1 on [3, 4), 0 after; batch 3 starts at 5.
    recs = attach_timelines(
        [
            BatchRecord(1, "b", 1, 0, 0.0, 0.0, 4.0),
            BatchRecord(2, "a", 1, 0, 1.0, 1.0, 3.0),
            BatchRecord(3, "a", 2, 0, 5.0, 5.0, 6.0),
        ]
    )
    expected = 0.5 * (math.exp(-2.0) - math.exp(-4.0))  # oversub(2) = 0.5 over [1, 3)
    assert ewma_loads(recs, fmap, tau)[3][3] == pytest.approx(expected, rel=1e-12)
    by_id = {r.batch_id: r for r in recs}
    history = EwmaHistory(fmap, tau)
    history.add(by_id[2])  # in end order
    history.add(by_id[1])
    assert history.value(by_id[3])[3] == pytest.approx(expected, rel=1e-12)


def test_design_names_with_the_oversub_channel():
    assert Design(4, oversub=True).names()[4:] == ["co_count", "co_compute", "co_memory", "oversub"]
    assert Design(3).names()[-1] == "co_memory"


def test_device_load_views_follow_start_and_end_events(fmap):
    state = DeviceLoad(1.0, fmap.oversub)
    a, b = fmap.co_vec("a", 1), fmap.co_vec("b", 1)
    state.advance(0.0)
    state.start(a)
    assert state.coarse() == [coarse_view_of(1.0, a, fmap)]
    # Two candidates starting together: each sees the running batch and the other one.
    both = state.coarse([a, b])
    assert both[0][:3] == pytest.approx((2.0, a[1] + b[1], a[2] + b[2]))
    assert both[1][:3] == pytest.approx((2.0, 2 * a[1], 2 * a[2]))
    state.advance(2.0)
    assert state.ewma_view()[0] == pytest.approx(1.0 - math.exp(-2.0))
    assert state.ewma_view(3.0)[0] == pytest.approx(1.0 - math.exp(-3.0))
    assert state.cum[:3] == pytest.approx([2.0, 2 * a[1], 2 * a[2]])
    state.end(a)
    assert state.load == [0.0, 0.0, 0.0] and state.count == 0


def coarse_view_of(n, f, fmap):
    from predlat.predict.colocation import coarse_view

    return coarse_view(n, f[1], f[2], fmap.oversub)


def test_device_load_advance_agrees_with_the_view_ahead():
    # advance (inlined on the hot path) and ewma_view(t) must decay alike, bit for bit.
    fmap = FeatureMap(cpu_profile(cores=2, threads=1))
    state = DeviceLoad(0.5, fmap.oversub)
    a, b = fmap.co_vec("a", 1), fmap.co_vec("a", 2)
    state.advance(0.0)
    for t, change in ((0.3, a), (0.7, b), (1.1, a), (1.6, None)):
        ahead = state.ewma_view(t)
        state.advance(t)
        assert state.ewma_view() == ahead
        if change is not None:
            state.start(change)
    assert state.cum[3] > 0.0  # the oversub channel was integrated
