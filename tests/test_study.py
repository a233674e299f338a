"""The study's pure parts (split, recovery, noise floor, results shape) on synthetic
traces, and one short end-to-end run on a real device."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from predlat.devices.base import BatchJob
from predlat.experiments.study import (
    STAT_KEYS,
    CollectedTrace,
    ShiftSpec,
    StudyConfig,
    TraceSpec,
    build_results,
    evaluate_grid,
    evaluate_shift,
    foreign_at,
    noise_floor_errors,
    recovery_batches,
    relabel,
    rolling_mean,
    run_study,
    split_chronological,
    study_config,
)
from predlat.experiments.study_report import write_outputs
from predlat.profiling.profile import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
)
from predlat.traces import BatchRecord, attach_timelines, read_trace
from predlat.traces.collect import summarize

SOLO = {"a": 0.010, "b": 0.004, "c": 0.020}  # seconds per batch of 1
UTIL = {"a": (0.8, 0.2), "b": (0.3, 0.7), "c": (0.5, 0.5)}  # (compute, memory)


def _profile() -> Profile:
    models = {}
    for m, s in SOLO.items():
        models[m] = {}
        for n in (1, 2, 4, 8):
            features = dict.fromkeys(FEATURE_NAMES, 1.0)
            features["compute_util"], features["memory_util"] = UTIL[m]
            stats = LatencyStats(s * (0.5 + 0.5 * n), s * (0.6 + 0.5 * n), 0.02, 10)
            models[m][n] = BatchProfile(stats, features)
    machine = MachineInfo("CPUExecutionProvider", 2, 1, "synthetic", {})
    return Profile(machine=machine, models=models)


def _synthetic_trace(models: tuple[str, ...], seed: int, batches: int = 240) -> list[BatchRecord]:
    """Two slots running back to back with random gaps; latency grows with how many
    batches run beside (a known, learnable interference)."""
    rng = np.random.default_rng(seed)
    profile = _profile()
    free_at = [0.0, 0.0]
    raw = []
    for i in range(batches):
        slot = int(np.argmin(free_at))
        model = models[int(rng.integers(len(models)))]
        n = int(rng.integers(1, 9))
        start = free_at[slot] + float(rng.exponential(0.004))
        other_busy = free_at[1 - slot] > start
        slowdown = 1.0 + (0.6 if other_busy else 0.0) + float(rng.normal(0, 0.02))
        latency = profile.solo_latency(model, n) * slowdown
        raw.append(BatchRecord(i, model, n, slot, start - 0.001, start, start + latency))
        free_at[slot] = start + latency
    return attach_timelines(raw)


def _collected(name: str, models: tuple[str, ...], seed: int) -> CollectedTrace:
    spec = TraceSpec(name, "set", models, 2, 0.5, 1.0, seed)
    records = _synthetic_trace(models, seed)
    return CollectedTrace(spec, records, summarize(records, _profile()))


# -- pure parts ----------------------------------------------------------------------
def test_split_is_chronological_75_25() -> None:
    records = [BatchRecord(i, "a", 1, 0, s, s, s + 1.0) for i, s in enumerate([3, 0, 2, 1])]
    train, test = split_chronological(records, 0.75)
    assert [r.batch_id for r in train] == [1, 3, 2] and [r.batch_id for r in test] == [0]
    assert max(r.start for r in train) <= min(r.start for r in test)
    train, test = split_chronological(_synthetic_trace(("a",), 0, 200), 0.75)
    assert (len(train), len(test)) == (150, 50)


def test_relabel_moves_ids_times_and_timelines_together() -> None:
    records = _synthetic_trace(("a", "b"), 1, 20)
    moved = relabel(records, id_offset=100, time_offset=5.0, device=3)
    for old, new in zip(records, moved, strict=True):
        assert new.batch_id == old.batch_id + 100 and new.device == 3
        assert new.latency == pytest.approx(old.latency)
        assert [o.batch_id for o in new.timeline] == [o.batch_id + 100 for o in old.timeline]
        assert all(new.start <= o.start <= o.end <= new.end + 1e-12 for o in new.timeline)


def test_rolling_mean_and_recovery_on_a_known_series() -> None:
    assert np.allclose(rolling_mean([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    assert np.isnan(rolling_mean([1, 2, 3], 3, min_periods=2)[0])
    # Error 0.5 for 100 batches after the shift, then 0.1: the pre-shift error is 0.1 and
    # the band 0.15. A trailing window of 20 is back in the band when at most 2 of its 20
    # values are 0.5: 0.4 * 2 / 20 + 0.1 = 0.14 <= 0.15 (3 would give 0.16).
    after = [0.5] * 100 + [0.1] * 100
    assert recovery_batches(after, 0.15, window=20, min_periods=5) == 118
    assert recovery_batches([0.5] * 50, 0.15, window=20) is None
    # Never hurt by the shift: recovered at the first measurable window.
    assert recovery_batches([0.1] * 50, 0.15, window=20, min_periods=5) == 5


def test_foreign_cpu_lookup_by_sampling_period() -> None:
    samples = [(0.5, 0.1), (1.0, 0.3)]
    assert foreign_at(samples, 0.2) == 0.1 and foreign_at(samples, 0.7) == 0.3
    assert foreign_at(samples, 5.0) == 0.3 and foreign_at([], 1.0) is None


def test_noise_floor_is_distance_to_own_median() -> None:
    floor = noise_floor_errors({("a", 1): [1.0, 1.0, 2.0], ("b", 4): [4.0, 5.0, 5.0]})
    expected = [0, 0, 0.5, 0.25, 0, 0]
    assert floor["mean_rel_err"] == pytest.approx(np.mean(expected))
    assert floor["per_model"] == {"a": pytest.approx(1 / 6), "b": pytest.approx(1 / 12)}
    assert floor["samples"] == 6


def test_grids_cover_loads_concurrency_and_model_sets() -> None:
    zoo = ("resnet", "yolo", "roberta", "vit", "vgg", "convnext")
    full = study_config(zoo, "full")
    assert {s.concurrency for s in full.grid} == {2, 3, 4}
    assert len({s.load for s in full.grid}) == 3
    assert {s.set_name for s in full.grid} == {"all6", "A", "B"}
    assert len({s.name for s in full.grid}) == len(full.grid)
    quick = study_config(zoo, "quick")
    assert len(quick.grid) < len(full.grid)
    assert {s.set_name for s in quick.grid} == {"all6", "A", "B"}
    assert set(quick.shift.before.models).isdisjoint(quick.shift.after.models)
    single = study_config(("resnet",), "quick")
    assert single.shift.before.models == single.shift.after.models == ("resnet",)


def test_results_shape_from_synthetic_traces(tmp_path: Path) -> None:
    profile = _profile()
    traces = [_collected("t0", ("a", "b"), 0), _collected("t1", ("a", "b", "c"), 1)]
    traces[0].cpu_samples = [(1e9, 0.05)]  # a quiet machine
    traces[1].cpu_samples = [(1e9, 0.50)]  # a busy one
    names = ("solo", "coarse", "fine", "fine-rls")
    grid = evaluate_grid(traces, profile, names)
    assert set(grid.predictions) == {*names, "fine-posterior", "fine-rls-posterior"}
    assert grid.train_batches == 360 and grid.test_batches == 120
    shift = evaluate_shift(
        _synthetic_trace(("a",), 2),
        _synthetic_trace(("b", "c"), 3),
        profile,
        names,
        window=20,
        min_periods=5,
    )
    assert shift.shift_index == 60 and len(shift.errors["fine-rls"]) == 300
    config = StudyConfig(
        mode="test",
        models=("a", "b", "c"),
        model_sets={"all3": ("a", "b", "c")},
        grid=tuple(t.spec for t in traces),
        shift=None,
        predictors=names,
        window=20,
        min_periods=5,
    )
    noise = noise_floor_errors({("a", 1): [1.0, 1.1, 0.9]})
    results = build_results(config, profile, noise, traces, grid, shift)
    results["timings"] = {"total_s": 1.0}
    write_outputs(tmp_path, results, grid, shift, config)

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["noise_floor"]["mean_rel_err"] == pytest.approx(noise["mean_rel_err"])
    for name in (*names, "fine-posterior", "fine-rls-posterior"):
        entry = data["predictors"][name]
        assert all(k in entry for k in STAT_KEYS)
        assert entry["batches"] == 120
        assert entry["quiet"]["batches"] == 60  # the test part of the quiet trace only
    for name in names:
        s = data["shift"][name]
        assert {"before_mean_rel_err", "after_mean_rel_err", "recovery_batches"} <= set(s)
    assert data["shift"]["fine-rls"]["online"] is True
    assert data["shift"]["coarse"]["online"] is False
    assert {"within_1_5x_noise_floor", "at_most_third_of_coarse"} <= set(data["targets"])
    assert len(data["per_trace"]) == 2
    # The learnable interference is learned: fine beats solo by far.
    assert (
        data["predictors"]["fine"]["mean_rel_err"]
        < 0.5 * data["predictors"]["solo"]["mean_rel_err"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "## Answer" in report and "| fine-rls |" in report and "noise floor" in report
    for png in (
        "error_cdf.png",
        "error_cdf_posterior.png",
        "error_per_model.png",
        "shift_error.png",
    ):
        assert (tmp_path / png).stat().st_size > 1000
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["targets"].values())


def test_shift_recovery_is_reported_for_online_predictors_only_in_targets() -> None:
    profile = _profile()
    shift = evaluate_shift(
        _synthetic_trace(("a",), 4),
        _synthetic_trace(("c",), 5),
        profile,
        ("coarse", "fine-rls"),
        window=20,
        min_periods=5,
    )
    results = {"predictors": {}, "noise_floor": {}, "shift": shift.stats}
    from predlat.experiments.study import target_check

    targets = target_check(results)
    assert set(targets["adaptive_recovery_batches"]) == {"fine-rls"}
    assert targets["fine_rls_over_coarse"] is None


# -- end to end on a real device -------------------------------------------------------
@pytest.mark.slow
def test_study_end_to_end_smoke(tmp_path: Path) -> None:
    from conftest import build_matmul_model

    a = str(build_matmul_model(tmp_path / "wide.onnx", width=512, depth=6))
    b = str(build_matmul_model(tmp_path / "deep.onnx", width=256, depth=12))
    spec = TraceSpec("both-k2", "all2", ("wide", "deep"), 2, 0.5, 1.5, 0)
    config = StudyConfig(
        mode="smoke",
        models=("wide", "deep"),
        sources={"wide": a, "deep": b},
        model_sets={"all2": ("wide", "deep")},
        grid=(spec,),
        shift=ShiftSpec(
            TraceSpec("before", "A", ("wide",), 2, 0.3, 1.5, 1),
            TraceSpec("after", "B", ("deep",), 2, 0.6, 1.5, 2),
        ),
        profile_sizes=(1, 4, 8),
        profile_repeats=3,
        noise_sizes=(1, 8),
        noise_repeats=3,
        predictors=("solo", "coarse", "fine-rls"),
        window=10,
        min_periods=3,
    )
    console = Console(file=open(tmp_path / "log.txt", "w"), width=120)  # noqa: SIM115
    run = run_study(config, tmp_path / "out", progress=False, console=console)
    console.file.close()
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["noise_floor"]["mean_rel_err"] >= 0
    assert {"solo", "coarse", "fine-rls", "fine-rls-posterior"} <= set(data["predictors"])
    assert set(data["shift"]) == {"solo", "coarse", "fine-rls"}
    assert data["timings"]["total_s"] > 0
    assert (out / "report.md").exists() and (out / "profile.json").exists()
    trace = read_trace(out / "traces" / "both-k2.parquet")
    assert trace.metadata["concurrency"] == 2 and len(trace.records) > 10
    assert len(run.traces) == 3


def test_cli_rejects_bad_input_before_any_work(tmp_path: Path, capsys) -> None:
    from predlat.cli import main

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["study", "--out", str(a_file)]) == 2
    assert main(["study", "--predictors", "fine,bogus", "--out", str(tmp_path / "o")]) == 2
    assert main(["study", "--models", "no-such-model", "--out", str(tmp_path / "o")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("predlat study: error:") for e in errors)
    assert "bogus" in errors[1] and "no-such-model" in errors[2]
    assert not (tmp_path / "o").exists()


# -- co-location noise floor -------------------------------------------------------------
def test_colocation_floor_is_distance_to_own_median_per_k() -> None:
    from predlat.experiments.colocation_floor import colocation_floor_errors

    floor = colocation_floor_errors(
        {
            (2, 0, 0): [1.0, 1.0, 2.0],  # median 1: 0, 0, 0.5
            (2, 0, 1): [4.0, 5.0, 5.0],  # median 5: 0.25, 0, 0
            (3, 1, 0): [2.0, 2.0, 2.0],  # 0, 0, 0
            (3, 1, 1): [1.0, 2.0, 4.0],  # median 2: 1, 0, 0.5
            (3, 1, 2): [3.0, 3.0, 3.0],  # 0, 0, 0
        }
    )
    errors = [0, 0, 0.5, 0.25, 0, 0, 0, 0, 0, 1, 0, 0.5, 0, 0, 0]
    assert floor["samples"] == 15
    assert floor["mean_rel_err"] == pytest.approx(2.25 / 15)
    assert floor["p95"] == pytest.approx(np.percentile(errors, 95))
    assert floor["per_k"] == {"2": pytest.approx(0.75 / 6), "3": pytest.approx(1.5 / 9)}
    empty = colocation_floor_errors({})
    assert empty["samples"] == 0 and math.isnan(empty["mean_rel_err"]) and empty["per_k"] == {}


def test_colocation_scenarios_are_seeded_and_distinct() -> None:
    from predlat.errors import ConfigError
    from predlat.experiments.colocation_floor import draw_scenarios

    pairs = [(m, n) for m in ("a", "b", "c") for n in (1, 2, 4, 8)]
    scenarios = draw_scenarios(pairs, (2, 3, 4), 3, seed=7)
    assert [s.k for s in scenarios] == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert all(len(set(s.batches)) == s.k and set(s.batches) <= set(pairs) for s in scenarios)
    assert scenarios == draw_scenarios(list(reversed(pairs)), (2, 3, 4), 3, seed=7)
    assert scenarios != draw_scenarios(pairs, (2, 3, 4), 3, seed=8)
    # Fewer pairs than K: pairs repeat.
    assert draw_scenarios([("a", 1)], (3,), 1)[0].batches == (("a", 1),) * 3
    with pytest.raises(ConfigError):
        draw_scenarios([], (2,), 1)


def test_colocation_results_in_results_json_and_report(tmp_path: Path) -> None:
    profile = _profile()
    traces = [_collected("t0", ("a", "b"), 0)]
    names = ("solo", "fine-rls")
    grid = evaluate_grid(traces, profile, names)
    config = StudyConfig(
        mode="test",
        models=("a", "b"),
        model_sets={"all2": ("a", "b")},
        grid=(traces[0].spec,),
        shift=None,
        predictors=names,
    )
    from predlat.experiments.colocation_floor import colocation_floor_errors

    colocation = colocation_floor_errors({(2, 0, 0): [1.0, 1.0, 2.0], (3, 1, 0): [4.0, 5.0]})
    colocation.update(scenarios=[{"k": 2, "batches": []}, {"k": 3, "batches": []}], repeats=3)
    noise = noise_floor_errors({("a", 1): [1.0, 1.1, 0.9]})
    results = build_results(config, profile, noise, traces, grid, None, (), colocation)
    write_outputs(tmp_path, results, grid, None, config)

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["colocation_floor"]["per_k"] == {
        "2": pytest.approx(1 / 6),
        "3": pytest.approx(0.1125),
    }
    rls = data["predictors"]["fine-rls"]["mean_rel_err"]
    assert data["targets"]["fine_rls_over_colocation_floor"] == pytest.approx(
        rls / colocation["mean_rel_err"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "Co-location noise floor" in report and "16.7%** at K=2" in report
    assert "| co-location noise floor | co-located repeats |" in report
    assert "Noise floor** (fresh repeated solo runs" in report  # the solo floor stays


@pytest.mark.slow
def test_colocation_floor_on_a_real_device(tmp_path: Path) -> None:
    from conftest import build_matmul_model
    from predlat.devices.onnxruntime_device import OrtDevice, OrtDeviceConfig
    from predlat.experiments.colocation_floor import (
        Scenario,
        measure_colocation_floor,
        run_together,
    )
    from predlat.models import resolve_model

    path = build_matmul_model(tmp_path / "mm.onnx", width=256, depth=4)
    spec = resolve_model(str(path))
    device = OrtDevice(OrtDeviceConfig(num_slots=2, intra_op_threads=1))
    try:
        device.load(spec)
        together = run_together(device, [BatchJob(0, spec.name, 1), BatchJob(1, spec.name, 4)])
        assert [(r.slot, r.batch_size) for r in together] == [(0, 1), (1, 4)]
        scenarios = [
            Scenario(((spec.name, 1), (spec.name, 4))),
            Scenario(((spec.name, 4), (spec.name, 4))),
        ]
        floor = measure_colocation_floor(device, scenarios, 3)
    finally:
        device.close()
    assert floor["samples"] == 2 * 2 * 3 and set(floor["per_k"]) == {"2"}
    assert floor["repeats"] == 3 and len(floor["scenarios"]) == 2
    values = [floor["mean_rel_err"], floor["p95"], *floor["per_k"].values()]
    values += [b["mean_rel_err"] for s in floor["scenarios"] for b in s["batches"]]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert all(b["median_ms"] > 0 for s in floor["scenarios"] for b in s["batches"])
    assert floor["mean_start_spread_ms"] >= 0
