"""The study's pure parts: leave-one-out floors, the recovery definition, the regime
split and leave-one-configuration-out on simulated traces, and the grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from predlat.experiments.colocation_floor import colocation_floor, draw_schedule, floor_for
from predlat.experiments.floors import loo_errors, noise_floor
from predlat.experiments.study import evaluate_study
from predlat.experiments.study_config import (
    OVERSUBSCRIBED,
    SPATIAL,
    EvalConfig,
    TraceSpec,
    regime_of,
    study_config,
)
from predlat.experiments.study_data import StudyData
from predlat.experiments.study_eval import leave_one_out, split_chronological, split_traces
from predlat.experiments.study_shift import recovery_batches, rolling_mean, shift_pairs
from predlat.experiments.study_sim import simulate_records, write_simulated_study
from predlat.predict.synthetic import synthetic_profile
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord


def cpu_profile(models: int = 4) -> Profile:
    profile = synthetic_profile(models)
    profile.machine.provider = "CPUExecutionProvider"  # two cores, one thread per slot
    return profile


def spec(name: str, models: tuple[str, ...], k: int, load: float, seed: int = 0) -> TraceSpec:
    return TraceSpec(name, name.split("-")[0], models, k, load, 1.0, seed)


# -- leave-one-out floors ----------------------------------------------------------------
def test_loo_scores_each_sample_against_the_median_of_the_others() -> None:
    # 1 vs median(2, 3) = 2.5; 2 vs median(1, 3) = 2; 3 vs median(1, 2) = 1.5
    assert loo_errors([1.0, 2.0, 3.0]) == pytest.approx([1.5, 0.0, 0.5])
    assert loo_errors([5.0]) == []  # nothing to compare against
    floor = noise_floor({("a", 1): [1.0, 2.0, 3.0], ("b", 4): [2.0, 2.0]})
    assert floor.samples == 5
    assert floor.mean_rel_err == pytest.approx(2.0 / 5)
    assert floor.per_group == pytest.approx({"a": 2.0 / 3, "b": 0.0})


def test_loo_floor_of_identical_repeats_is_zero_and_never_uses_the_sample_itself() -> None:
    assert loo_errors([4.0, 4.0, 4.0]) == [0.0, 0.0, 0.0]
    # Against its own median the middle sample would score 0 either way; the outlier is
    # scored against the others (1.0), not against a median it pulled.
    assert loo_errors([1.0, 1.0, 3.0])[2] == pytest.approx(2.0 / 3)


def test_colocation_floor_is_per_k_and_weighted_like_the_test_batches() -> None:
    samples = {
        (2, 0, 0): [1.0, 1.0, 1.0],
        (2, 0, 1): [2.0, 2.0, 2.0],
        (4, 1, 0): [1.0, 2.0, 3.0],  # loo errors 1.5, 0, 0.5
    }
    floor = colocation_floor(samples, repeats=3)
    assert floor.per_group == pytest.approx({"2": 0.0, "4": 2.0 / 3})
    assert floor.per_group_samples == {"2": 6, "4": 3}
    assert floor.info["repeats"] == 3
    assert floor_for(floor, {2: 30}).mean_rel_err == 0.0
    mixed = floor_for(floor, {2: 10, 4: 30})
    assert mixed.mean_rel_err == pytest.approx(0.75 * 2.0 / 3) and mixed.samples == 9
    assert floor_for(floor, {3: 10}) is None


def test_schedules_are_seeded_trace_like_and_of_the_given_k() -> None:
    profile = cpu_profile()
    models = list(profile.models)
    a = draw_schedule(models, (1, 2, 4, 8), 2, 30, profile.solo_latency, seed=3)
    b = draw_schedule(models, (1, 2, 4, 8), 2, 30, profile.solo_latency, seed=3)
    c = draw_schedule(models, (1, 2, 4, 8), 2, 30, profile.solo_latency, seed=4)
    assert a == b and a != c and a.k == 2 and len(a.batches) == 30
    ats = [x.at for x in a.batches]
    assert ats == sorted(ats) and ats[-1] > 0
    assert len({(x.model, x.batch_size) for x in a.batches}) > 3


# -- recovery ------------------------------------------------------------------------------
def test_a_brief_dip_is_not_recovery_a_held_window_is() -> None:
    window = 5
    high, low = [1.0] * 20, [0.1] * 20
    dip = high + [0.0] * 3 + high  # rolling mean dips below 0.5 only briefly
    assert min(rolling_mean(dip, window, 1)[20:23]) < 0.5
    assert recovery_batches(dip, 0.5, window, 1) is None
    held = high + low
    r = recovery_batches(held, 0.5, window, 1)
    assert r is not None
    # from r on, the rolling mean stays under the threshold for a full window
    rolling = rolling_mean(held, window, 1)
    assert (rolling[r - 1 : r - 1 + window] <= 0.5).all() and rolling[r - 2] > 0.5


def test_recovery_needs_a_full_window_before_the_stream_ends() -> None:
    series = [1.0] * 20 + [0.0] * 4  # under the threshold, but only for 4 batches
    assert recovery_batches(series, 0.5, 5, 1) is None
    assert recovery_batches([0.1] * 30, 0.5, 5, 3) == 3  # never hurt: first measured
    assert recovery_batches([0.1] * 30, math.nan, 5, 3) is None


# -- regimes on the simulated device ---------------------------------------------------------
def test_regime_is_spatial_while_slots_times_threads_fit_the_cores() -> None:
    assert regime_of(2, threads=1, cores=2, accelerator=False) == SPATIAL
    assert regime_of(3, threads=1, cores=2, accelerator=False) == OVERSUBSCRIBED
    assert regime_of(2, threads=2, cores=2, accelerator=False) == OVERSUBSCRIBED
    assert regime_of(4, threads=1, cores=8, accelerator=False) == SPATIAL
    assert regime_of(4, threads=1, cores=1, accelerator=True) == "accelerator"


def test_grid_on_two_cores_puts_the_main_result_at_k2() -> None:
    models = [f"m{i}" for i in range(6)]
    for mode in ("full", "quick"):
        config = study_config(models, mode, cores=2)
        k2 = [s for s in config.grid if s.concurrency == 2]
        assert len(k2) > len(config.grid) / 2
        assert {s.set_name for s in k2} == {"all6", "A", "B"}
        assert {s.concurrency for s in config.grid} - {2}  # an oversubscribed section
    quick, full = study_config(models, "quick"), study_config(models, "full")
    assert sum(s.duration for s in quick.grid) <= 90
    assert sum(s.duration for s in full.grid) <= 400
    wide = study_config(models, "full", cores=8)
    assert all(
        regime_of(s.concurrency, threads=1, cores=8, accelerator=False) == SPATIAL
        for s in wide.grid
    )


def test_simulated_traces_split_into_spatial_and_oversubscribed_regimes(tmp_path: Path) -> None:
    profile = cpu_profile()
    models = tuple(profile.models)
    specs = [spec("all-k2", models, 2, 0.6, 1), spec("all-k4", models, 4, 0.6, 2)]
    traces = write_simulated_study(tmp_path, profile, specs, batches=200)
    assert [t.regime for t in traces] == [SPATIAL, OVERSUBSCRIBED]
    slowdown = [
        np.mean([r.latency / profile.solo_latency(r.model, r.batch_size) for r in t.records])
        for t in traces
    ]
    assert slowdown[1] > 1.5 * slowdown[0]  # four batches time-share two cores
    data = StudyData(profile, traces)
    results = evaluate_study(data, EvalConfig(("solo", "fine-rls")))
    assert list(results.regimes) == [SPATIAL, OVERSUBSCRIBED]
    spatial = results.regimes[SPATIAL].evaluation.predictors
    assert set(spatial) == {"solo", "fine-rls", "fine-rls-posterior"}
    assert spatial["fine-rls"].per_k.keys() == {2}
    over = results.regimes[OVERSUBSCRIBED].evaluation.predictors
    assert over["solo"].mean_rel_err > spatial["solo"].mean_rel_err


def test_simulated_records_are_seeded() -> None:
    profile = cpu_profile()
    s = spec("all-k2", tuple(profile.models), 2, 0.5, 7)
    from predlat.devices.simulated import InterferenceLaw

    law = InterferenceLaw(cores=2)
    a, b = simulate_records(profile, s, law, 50), simulate_records(profile, s, law, 50)
    assert a == b and len(a) == 50 and any(r.timeline for r in a)


# -- leave one configuration out -------------------------------------------------------------
def test_leave_one_configuration_out_never_fits_on_the_held_out_trace(
    monkeypatch, tmp_path: Path
) -> None:
    import predlat.experiments.study_eval as study_eval

    profile = cpu_profile()
    models = tuple(profile.models)
    traces = write_simulated_study(
        tmp_path,
        profile,
        [spec(f"s{i}-k2", models, 2, 0.3 + 0.2 * i, i) for i in range(3)],
        batches=40,
    )
    parts = split_traces(traces, 0.75)
    fitted_on: list[set[int]] = []
    real = study_eval.make_predictor

    class Recorder:
        def __init__(self, name: str, p: Profile) -> None:
            self.inner = real(name, p)

        def fit(self, records: list[BatchRecord]):
            fitted_on.append({r.device for r in records})
            return self.inner.fit(records)

    monkeypatch.setattr(study_eval, "make_predictor", Recorder)
    out = leave_one_out("solo", parts, profile, EvalConfig(("solo",)))
    assert fitted_on == [{1, 2}, {0, 2}, {0, 1}]
    assert {i: len(p) for i, p in out.items()} == {
        i: len(test) for i, (_, test) in enumerate(parts)
    }
    assert leave_one_out("solo", parts[:1], profile, EvalConfig(("solo",))) == {}


def test_split_is_chronological() -> None:
    records = [BatchRecord(i, "a", 1, 0, s, s, s + 1.0) for i, s in enumerate([3, 0, 2, 1])]
    train, test = split_chronological(records, 0.75)
    assert [r.start for r in train] == [0, 1, 2] and [r.start for r in test] == [3]


# -- shifts ----------------------------------------------------------------------------------
def test_shift_pairs_change_one_factor_at_a_time() -> None:
    profile = cpu_profile(4)
    a, b, all4 = ("m0", "m1"), ("m2", "m3"), tuple(profile.models)
    specs = [
        spec("A-k2-medium", a, 2, 0.5),
        spec("B-k2-medium", b, 2, 0.5),
        spec("all-k2-low", all4, 2, 0.25),
        spec("all-k2-medium", all4, 2, 0.5),
        spec("all-k2-high", all4, 2, 0.75),
        spec("all-k4-medium", all4, 4, 0.5),
    ]
    from predlat.experiments.study_data import StudyTrace

    traces = [
        StudyTrace(s.name, s.set_name, s.models, s.concurrency, s.load, SPATIAL, []) for s in specs
    ]
    pairs = {f: (x.name, y.name) for f, (x, y) in shift_pairs(traces, SPATIAL).items()}
    assert pairs == {
        "set": ("A-k2-medium", "B-k2-medium"),
        "load": ("all-k2-low", "all-k2-high"),
        "k": ("all-k2-medium", "all-k4-medium"),
    }
