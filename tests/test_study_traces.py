"""`predlat study --traces DIR` on a study folder written from the simulator, the
results.json keys, and (slow) the measuring path on a real device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predlat.errors import ConfigError
from predlat.experiments.floors import FloorSummary
from predlat.experiments.study_config import TraceSpec
from predlat.experiments.study_data import (
    FLOORS_FILE,
    load_study_dir,
    pack_traces,
    read_floors,
    write_floors,
)
from predlat.experiments.study_sim import write_simulated_study
from predlat.predict.synthetic import synthetic_profile


def sim_folder(root: Path) -> Path:
    profile = synthetic_profile(4)
    profile.machine.provider = "CPUExecutionProvider"
    all4, a, b = tuple(profile.models), ("m0", "m1"), ("m2", "m3")
    specs = [
        TraceSpec("A-k2-medium", "A", a, 2, 0.5, 1.0, 1),
        TraceSpec("B-k2-medium", "B", b, 2, 0.5, 1.0, 2),
        TraceSpec("all4-k2-low", "all4", all4, 2, 0.25, 1.0, 3),
        TraceSpec("all4-k2-medium", "all4", all4, 2, 0.5, 1.0, 4),
        TraceSpec("all4-k2-high", "all4", all4, 2, 0.75, 1.0, 5),
        TraceSpec("all4-k4-medium", "all4", all4, 4, 0.5, 1.0, 6),
    ]
    write_simulated_study(root, profile, specs, batches=120)
    floor = FloorSummary(0.05, per_group={"2": 0.04, "4": 0.09}, info={"repeats": 3})
    write_floors(root / FLOORS_FILE, FloorSummary(0.01, samples=8), floor)
    return root


def test_study_on_recorded_traces_writes_every_key(tmp_path: Path, capsys) -> None:
    from predlat.cli import main

    folder, out = sim_folder(tmp_path / "dataset"), tmp_path / "out"
    argv = ["study", "--traces", str(folder), "--out", str(out), "--no-progress"]
    assert main([*argv, "--predictors", "solo,coarse,fine-rls"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["source"] == str(folder) and data["main_regime"] == "spatial"
    spatial, over = data["regimes"]["spatial"], data["regimes"]["oversubscribed"]
    assert set(spatial["predictors"]) == {"solo", "coarse", "fine-rls", "fine-rls-posterior"}
    assert spatial["predictors"]["fine-rls"]["mean_rel_err"] > 0
    assert spatial["colocation_floor"]["mean_rel_err"] == pytest.approx(0.04)
    assert over["colocation_floor"]["mean_rel_err"] == pytest.approx(0.09)
    assert spatial["ks"] == [2] and over["ks"] == [4]
    assert data["unseen"]["predictors"]["fine-rls"]["mean_rel_err"] > 0
    assert set(data["shift"]) == {"set", "load", "k"}
    for factor in data["shift"].values():
        assert "recovery_batches" in factor["fine-rls"]
    assert data["shift_traces"]["set"] == {
        "before": "A-k2-medium",
        "after": "B-k2-medium",
        "train_batches": 90,
        "before_batches": 30,
        "after_batches": 120,
    }
    report = (out / "report.md").read_text()
    assert "## Spatial regime" in report and "## Oversubscribed regime" in report
    for fixed in ("Target", "met**", "No predictor can beat", "within_1_5x"):
        assert fixed not in report and fixed not in json.dumps(data)
    assert "spatial regime (K = 2)" in capsys.readouterr().out


def test_recorded_traces_evaluate_the_same_twice(tmp_path: Path) -> None:
    from predlat.experiments.study import evaluate_study
    from predlat.experiments.study_config import EvalConfig

    data = load_study_dir(sim_folder(tmp_path / "d"))
    a, b = (evaluate_study(data, EvalConfig(("fine-rls",))).to_json() for _ in range(2))
    for doc in (a, b):
        for regime in doc["regimes"].values():
            regime["predictors"]["fine-rls"].pop("fit_s")
    assert a["regimes"] == b["regimes"] and a["shift"] == b["shift"]


def test_a_folder_without_its_profile_is_refused(tmp_path: Path, capsys) -> None:
    from predlat.cli import main

    folder = sim_folder(tmp_path / "d")
    (folder / "profile.json").unlink()
    assert main(["study", "--traces", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert main(["study", "--traces", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    errors = capsys.readouterr().err
    assert "profile.json" in errors and "is not a folder" in errors


def test_study_folder_round_trips_metadata_and_floors(tmp_path: Path) -> None:
    folder = sim_folder(tmp_path / "d")
    data = load_study_dir(folder)
    by_name = {t.name: t for t in data.traces}
    assert by_name["A-k2-medium"].set_name == "A"
    assert by_name["all4-k4-medium"].regime == "oversubscribed"
    assert by_name["all4-k2-low"].load == 0.25 and len(by_name["all4-k2-low"].records) == 120
    assert data.colocation_floor.per_group == {"2": 0.04, "4": 0.09}
    assert data.noise_floor.samples == 8


def test_traces_packed_in_one_archive_read_the_same(tmp_path: Path) -> None:
    folder = sim_folder(tmp_path / "d")
    loose = {t.name: t.records for t in load_study_dir(folder).traces}
    files = sorted((folder / "traces").glob("*.parquet"))
    pack_traces(files, folder / "traces.tar")
    for path in files:
        path.unlink()
    packed = {t.name: t.records for t in load_study_dir(folder).traces}
    assert packed == loose
    (folder / "traces.tar").write_bytes(b"not an archive")
    with pytest.raises(ConfigError, match=r"traces\.tar"):
        load_study_dir(folder)


@pytest.mark.slow
def test_study_measures_on_a_real_device(tmp_path: Path) -> None:
    from rich.console import Console

    from conftest import build_matmul_model
    from predlat.experiments.study import run_study
    from predlat.experiments.study_config import EvalConfig, StudyConfig

    a = str(build_matmul_model(tmp_path / "wide.onnx", width=512, depth=6))
    b = str(build_matmul_model(tmp_path / "deep.onnx", width=256, depth=12))
    grid = (
        TraceSpec("A-k2", "A", ("wide",), 2, 0.4, 1.5, 0),
        TraceSpec("B-k2", "B", ("deep",), 2, 0.4, 1.5, 1),
    )
    config = StudyConfig(
        mode="smoke",
        models=("wide", "deep"),
        sources={"wide": a, "deep": b},
        model_sets={"A": ("wide",), "B": ("deep",)},
        grid=grid,
        evaluation=EvalConfig(("solo", "fine-rls"), window=10, min_periods=3),
        profile_sizes=(1, 4, 8),
        profile_repeats=3,
        noise_sizes=(1, 8),
        noise_repeats=3,
        colocation_ks=(2,),
        colocation_batches=6,
        colocation_repeats=3,
    )
    console = Console(file=open(tmp_path / "log.txt", "w"), width=120)  # noqa: SIM115
    run_study(config, tmp_path / "out", progress=False, console=console)
    console.file.close()
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["noise_floor"]["mean_rel_err"] >= 0
    assert data["colocation_floor"]["per_k"]["2"] >= 0
    assert "spatial" in data["regimes"] and data["timings"]["total_s"] > 0
    assert set(data["shift"]) == {"set"}
    again = load_study_dir(out)  # the measured folder is a valid --traces input
    assert {t.name for t in again.traces} == {"A-k2", "B-k2"}


@pytest.mark.slow
def test_colocation_schedule_replays_on_a_real_device(tmp_path: Path) -> None:
    from conftest import build_matmul_model
    from predlat.devices.onnxruntime_device import OrtDevice, OrtDeviceConfig
    from predlat.experiments.colocation_floor import (
        draw_schedule,
        measure_colocation_floor,
        replay,
    )
    from predlat.models import resolve_model

    spec = resolve_model(str(build_matmul_model(tmp_path / "mm.onnx", width=256, depth=4)))
    schedule = draw_schedule([spec.name], (1, 4), 2, 8, lambda m, n: 0.002 * n, seed=1)
    device = OrtDevice(OrtDeviceConfig(num_slots=2, intra_op_threads=1))
    try:
        device.load(spec)
        latencies = replay(device, schedule)
        floor = measure_colocation_floor(device, [schedule], 3)
    finally:
        device.close()
    assert len(latencies) == 8 and all(x > 0 for x in latencies)
    assert floor.samples == 8 * 3 and set(floor.per_group) == {"2"}
    assert floor.info["repeats"] == 3 and 0 <= floor.mean_rel_err < 10


def test_cli_rejects_bad_input_before_any_work(tmp_path: Path, capsys) -> None:
    from predlat.cli import main

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = str(tmp_path / "o")
    assert main(["study", "--out", str(a_file)]) == 2
    assert main(["study", "--predictors", "fine,bogus", "--out", out]) == 2
    assert main(["study", "--models", "no-such-model", "--out", out]) == 2
    assert main(["study", "--traces", str(tmp_path), "--quick", "--out", out]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("predlat study: error:") for e in errors)
    assert "bogus" in errors[1] and "no-such-model" in errors[2] and "--quick" in errors[3]
    assert not (tmp_path / "o").exists()


def test_floors_file_of_the_wrong_shape_says_what_it_expects(tmp_path):
    (tmp_path / "floors.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected an object with noise_floor"):
        read_floors(tmp_path / "floors.json")
