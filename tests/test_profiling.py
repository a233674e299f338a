"""The solo profiler: graph costs, machine peaks, profiles, the reuse cache and the CLI."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import build_matmul_model
from predlat.cli import main
from predlat.errors import ConfigError, PredlatError
from predlat.models import load_model_spec, resolve_model
from predlat.profiling import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
    graph_cost,
    load_or_profile,
    profile_models,
)
from predlat.profiling import profiler as profiler_module
from predlat.profiling.peaks import PeakConfig, cpu_model_name, measure_peaks

FAKE_PEAKS = {"gemm_gflops_per_s": 100.0, "mem_gbytes_per_s": 10.0}


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache per test, so reuse is tested from a known empty state."""
    path = tmp_path / "cache"
    monkeypatch.setenv("PREDLAT_CACHE_DIR", str(path))
    return path


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch, cache: Path) -> dict[str, list]:
    """Fixed peaks (fast, deterministic) and a log of every measurement the profiler makes."""
    calls: dict[str, list] = {"peaks": [], "measure": []}

    def fake_peaks(threads: int = 1, provider: str = "") -> dict[str, float]:
        calls["peaks"].append(threads)
        return dict(FAKE_PEAKS)

    real_measure = profiler_module._measure

    def measure(todo, *args, **kwargs):
        calls["measure"].append([(spec.name, list(sizes)) for spec, sizes in todo])
        return real_measure(todo, *args, **kwargs)

    monkeypatch.setattr(profiler_module, "measure_peaks", fake_peaks)
    monkeypatch.setattr(profiler_module, "_measure", measure)
    return calls


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(name: str, shape) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


# -- graph_cost: exact numbers on hand-built graphs --------------------------------------
def test_conv_flops_and_bytes_exact():
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model(
        [conv],
        [_f32("x", ["N", 3, 32, 32])],
        [_f32("y", ["N", 8, 16, 16])],
        [_weights("w", (8, 3, 3, 3)), _weights("b", (8,))],
    )
    cost = graph_cost(model, 2)
    outputs = 2 * 8 * 16 * 16
    assert cost.flops == outputs * (2 * 3 * 3 * 3 + 1)  # multiply-adds + bias
    assert cost.bytes == 4 * (2 * 3 * 32 * 32 + 8 * 3 * 3 * 3 + 8 + outputs)
    assert cost.per_op == {"Conv": cost.flops}
    assert cost.unknown_nodes == 0
    assert graph_cost(model, 4).flops == 2 * cost.flops
    # The caller's model is untouched: its batch axis is still symbolic.
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_depthwise_conv_counts_channels_per_group():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1])
    model = _model(
        [conv], [_f32("x", ["N", 8, 10, 10])], [_f32("y", ["N", 8, 10, 10])],
        [_weights("w", (8, 1, 3, 3))],
    )  # fmt: skip
    assert graph_cost(model, 3).flops == 2 * 3 * 8 * 10 * 10 * 1 * 3 * 3


def test_matmul_flops_include_batch_dims_and_ignore_declared_output_batch():
    mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    # The output declares a fixed batch of 1, as some exporters write; it must not matter.
    model = _model(
        [mm], [_f32("x", ["N", 4, 16])], [_f32("y", [1, 4, 32])], [_weights("w", (16, 32))]
    )
    cost = graph_cost(model, 5)
    assert cost.flops == 2 * 5 * 4 * 32 * 16
    assert cost.bytes == 4 * (5 * 4 * 16 + 16 * 32 + 5 * 4 * 32)


def test_gemm_with_transposed_b_and_bias():
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)
    model = _model(
        [gemm], [_f32("x", ["N", 16])], [_f32("y", ["N", 32])],
        [_weights("w", (32, 16)), _weights("c", (32,))],
    )  # fmt: skip
    assert graph_cost(model, 3).flops == 2 * 3 * 32 * 16 + 3 * 32


def test_gather_counts_rows_read_not_the_whole_table():
    gather = helper.make_node("Gather", ["table", "ids"], ["y"])
    model = _model(
        [gather],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
        [_f32("y", ["N", 16, 64])],
        [_weights("table", (1000, 64))],
    )
    cost = graph_cost(model, 2)
    assert cost.flops == 0
    assert cost.bytes == 2 * 16 * 8 + 2 * (2 * 16 * 64 * 4)  # ids + rows read and written


def test_elementwise_softmax_and_views(tmp_path: Path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Softmax", ["r"], ["s"], axis=-1),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([-1, 2, 5], dtype=np.int64), "shape")
    model = _model(nodes, [_f32("x", ["N", 10])], [_f32("y", ["N", 2, 5])], [shape])
    path = tmp_path / "ew.onnx"
    onnx.save(model, str(path))
    cost = graph_cost(path, 4)  # from a file this time
    assert cost.per_op == {"Relu": 40.0, "Softmax": 5 * 40.0, "Reshape": 0.0}
    assert cost.per_op_bytes["Reshape"] == 0  # a view moves nothing
    assert cost.bytes == 2 * (2 * 40 * 4)  # Relu and Softmax each read and write 40 floats


def test_nodes_with_unknown_shapes_count_zero():
    nodes = [
        helper.make_node("Mystery", ["x"], ["m"], domain="com.example"),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [_f32("x", ["N", 10])], [_f32("r", ["N", 10]), _f32("y", ["N", 10])]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    cost = graph_cost(model, 2)
    assert cost.unknown_nodes == 2
    assert cost.total_nodes == 3
    assert cost.flops == 20  # only the Relu on x


def test_graph_cost_rejects_batch_zero():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_f32("x", ["N"])], [_f32("y", ["N"])])
    with pytest.raises(ValueError):
        graph_cost(model, 0)


# -- peaks -------------------------------------------------------------------------------
def test_peaks_are_positive_and_finite():
    quick = PeakConfig(gemm_size=128, gemm_runs=3, mem_mbytes=8, mem_runs=3)
    peaks = measure_peaks(1, config=quick)
    assert set(peaks) == {"gemm_gflops_per_s", "mem_gbytes_per_s"}
    assert all(math.isfinite(v) and v > 0 for v in peaks.values())
    assert cpu_model_name()


# -- profile_models ----------------------------------------------------------------------
def test_profile_models_gives_documented_shape(matmul_model_path: Path, cache: Path):
    spec = load_model_spec(matmul_model_path, name="mm")
    started = time.perf_counter()
    profile = profile_models([spec], [1, 2], 3, progress=False, peaks=FAKE_PEAKS)
    wall = time.perf_counter() - started

    data = json.loads(json.dumps(profile.to_json()))
    assert set(data) >= {"machine", "models"}
    assert {"peaks", "cores", "provider"} <= set(data["machine"])
    assert data["machine"]["peaks"] == FAKE_PEAKS
    assert set(data["models"]["mm"]) == {"1", "2"}
    for n in (1, 2):
        entry = profile.models["mm"][n]
        assert entry.latency.samples == 3
        assert 0 < entry.latency.median <= entry.latency.p99
        assert entry.latency.median * 3 < wall  # seconds in memory, not milliseconds
        file_entry = data["models"]["mm"][str(n)]
        assert set(file_entry["latency_ms"]) >= {"median", "p99", "cv"}
        assert file_entry["latency_ms"]["median"] == pytest.approx(entry.latency.median * 1e3)
        features = entry.features
        assert set(features) == set(FEATURE_NAMES)
        assert features["flops"] == graph_cost(matmul_model_path, n).flops
        assert features["gflops_per_s"] == pytest.approx(
            features["flops"] / entry.latency.median / 1e9
        )
        assert features["compute_util"] == pytest.approx(features["gflops_per_s"] / 100.0)
        assert features["memory_util"] == pytest.approx(features["gbytes_per_s"] / 10.0)
        assert features["arith_intensity"] == pytest.approx(features["flops"] / features["bytes"])
    assert (
        profile.models["mm"][2].features["flops"] == 2 * profile.models["mm"][1].features["flops"]
    )


def test_profile_models_on_the_tiny_zoo_model(cache: Path):
    profile = profile_models([resolve_model("tiny")], [1, 2], 3, progress=False, peaks=FAKE_PEAKS)
    assert profile.batch_sizes("tiny") == [1, 2]
    assert profile.solo_latency("tiny", 2) > 0


def test_a_model_that_fails_at_a_batch_size_is_a_one_line_error(tmp_path: Path, cache: Path):
    # A fixed reshape target makes batch 1 valid and batch 2 fail inside the engine.
    shape = numpy_helper.from_array(np.array([1, 16], dtype=np.int64), "shape")
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [_f32("x", ["N", 16])],
        [_f32("y", [1, 16])],
        [shape],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PredlatError, match="fails at batch size 2"):
        profile_models([load_model_spec(path)], [1, 2], 3, progress=False, peaks=FAKE_PEAKS)


def test_bad_requests_are_config_errors(matmul_model_path: Path):
    spec = load_model_spec(matmul_model_path)
    with pytest.raises(ConfigError):
        profile_models([spec], [1], 0, progress=False, peaks=FAKE_PEAKS)
    with pytest.raises(ConfigError):
        profile_models([spec], [0], 3, progress=False, peaks=FAKE_PEAKS)
    with pytest.raises(ConfigError):
        profile_models([], [1], 3, progress=False, peaks=FAKE_PEAKS)


# -- load_or_profile: reuse --------------------------------------------------------------
def test_load_or_profile_reuses_and_fills_gaps(tmp_path: Path, counted: dict):
    spec = load_model_spec(build_matmul_model(tmp_path / "m.onnx", width=64, depth=2), name="m")
    first = load_or_profile([spec], [1, 2], 3, out_dir=tmp_path / "out", progress=False)
    assert counted["measure"] == [[("m", [1, 2])]]
    assert counted["peaks"] == [1]

    second = load_or_profile([spec], [2, 1], 3, progress=False)
    assert counted["measure"] == [[("m", [1, 2])]]  # nothing measured again
    assert counted["peaks"] == [1]  # peaks measured once per machine
    assert second.to_json() == first.to_json()
    written = Profile.load(tmp_path / "out" / "profile.json")
    assert written.to_json() == first.to_json()

    third = load_or_profile([spec], [1, 4], 3, progress=False)
    assert counted["measure"][-1] == [("m", [4])]  # only the missing batch size
    assert third.batch_sizes("m") == [1, 4]
    assert third.models["m"][1].latency == first.models["m"][1].latency

    load_or_profile([spec], [1], 5, progress=False)  # more repeats than cached: measure again
    assert counted["measure"][-1] == [("m", [1])]


def test_load_or_profile_reprofiles_a_changed_model(tmp_path: Path, counted: dict):
    path = tmp_path / "m.onnx"
    other = load_model_spec(build_matmul_model(tmp_path / "o.onnx", width=32, depth=1), name="o")
    old = load_model_spec(build_matmul_model(path, width=64, depth=2), name="m")
    load_or_profile([old, other], [1], 3, progress=False)
    new = load_model_spec(build_matmul_model(path, width=64, depth=3), name="m")
    assert new.digest != old.digest
    profile = load_or_profile([new, other], [1], 3, progress=False)
    assert counted["measure"][-1] == [("m", [1])]  # the unchanged model is reused
    assert profile.digests["m"] == new.digest
    assert profile.models["m"][1].features["flops"] == 3 * (2 * 64 * 64 + 64)


def test_load_or_profile_force_and_other_thread_counts(tmp_path: Path, counted: dict):
    spec = load_model_spec(build_matmul_model(tmp_path / "m.onnx", width=64, depth=2), name="m")
    load_or_profile([spec], [1], 3, progress=False)
    load_or_profile([spec], [1], 3, progress=False, force=True)
    assert len(counted["measure"]) == 2
    assert counted["peaks"] == [1, 1]  # forcing measures the peaks again too
    load_or_profile([spec], [1], 3, progress=False, intra_op_threads=2)  # another machine key
    assert counted["measure"][-1] == [("m", [1])]
    assert counted["peaks"][-1] == 2
    assert len(list((tmp_path / "cache" / "profiles").glob("*.json"))) == 2


class _BusyMeter:
    """Other processes took half the CPU during the measurement."""

    def foreign_frac(self) -> float:
        return 0.5


def test_a_profile_measured_under_load_is_used_but_not_cached(
    tmp_path: Path, counted: dict, monkeypatch: pytest.MonkeyPatch, caplog
):
    spec = load_model_spec(build_matmul_model(tmp_path / "m.onnx", width=64, depth=2), name="m")
    monkeypatch.setenv("PREDLAT_FOREIGN_CPU_LIMIT", "0.1")
    monkeypatch.setattr(profiler_module, "CpuMeter", _BusyMeter)
    busy = load_or_profile([spec], [1], 3, out_dir=tmp_path / "out", progress=False)
    assert busy.batch_sizes("m") == [1]  # this run has its profile, and its file
    assert Profile.load(tmp_path / "out" / "profile.json").batch_sizes("m") == [1]
    assert not list((tmp_path / "cache" / "profiles").glob("*.json"))  # nothing cached
    assert "50% of the CPU" in caplog.text and "not cached" in caplog.text
    load_or_profile([spec], [1], 3, progress=False)
    assert len(counted["measure"]) == 2  # measured again: there was nothing to reuse
    monkeypatch.setenv("PREDLAT_FOREIGN_CPU_LIMIT", "0.6")  # the user accepts that load
    load_or_profile([spec], [1], 3, progress=False)
    load_or_profile([spec], [1], 3, progress=False)
    assert len(counted["measure"]) == 3  # cached, then reused


def test_corrupt_cache_is_ignored(tmp_path: Path, counted: dict):
    spec = load_model_spec(build_matmul_model(tmp_path / "m.onnx", width=64, depth=2), name="m")
    load_or_profile([spec], [1], 3, progress=False)
    (cache_file,) = (tmp_path / "cache" / "profiles").glob("*.json")
    cache_file.write_text("{not json")
    profile = load_or_profile([spec], [1], 3, progress=False)
    assert len(counted["measure"]) == 2
    assert profile.batch_sizes("m") == [1]


# -- Profile look-ups --------------------------------------------------------------------
def _hand_profile() -> Profile:
    machine = MachineInfo("CPUExecutionProvider", 2, 1, "cpu", dict(FAKE_PEAKS))
    medians = {1: 0.010, 2: 0.020, 4: 0.050}
    entries = {
        n: BatchProfile(LatencyStats(m, m * 1.1, 0.01, 5), dict.fromkeys(FEATURE_NAMES, float(n)))
        for n, m in medians.items()
    }
    return Profile(machine=machine, models={"m": entries}, digests={"m": "abc"})


def test_solo_latency_interpolates_and_extrapolates():
    profile = _hand_profile()
    assert profile.solo_latency("m", 2) == 0.020
    assert profile.solo_latency("m", 3) == pytest.approx(0.035)
    assert profile.solo_latency("m", 8) == pytest.approx(0.050 + 4 * 0.015)
    assert profile.features("m", 3)["flops"] == pytest.approx(3.0)
    with pytest.raises(PredlatError, match="not in the profile"):
        profile.solo_latency("other", 1)


def test_profile_file_round_trip(tmp_path: Path):
    profile = _hand_profile()
    profile.save(tmp_path / "p" / "profile.json")
    loaded = Profile.load(tmp_path / "p" / "profile.json")
    assert loaded.to_json() == profile.to_json()
    assert loaded.solo_latency("m", 4) == pytest.approx(0.050)
    assert list((tmp_path / "p").iterdir()) == [tmp_path / "p" / "profile.json"]


# -- the CLI -----------------------------------------------------------------------------
def test_cli_profiles_a_model_end_to_end(tmp_path: Path, cache: Path, capsys):
    out = tmp_path / "out"
    code = main(["profile", "--models", "tiny", "--batch-sizes", "1,2", "--repeats", "3",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads((out / "profile.json").read_text())
    assert {"peaks", "cores", "provider"} <= set(data["machine"])
    assert set(data["models"]["tiny"]) == {"1", "2"}
    assert set(data["models"]["tiny"]["2"]["features"]) == set(FEATURE_NAMES)
    printed = capsys.readouterr().out
    assert "tiny" in printed and "compute_util" in printed


def test_cli_defaults_to_the_zoo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    from predlat import models
    from predlat.models.zoo import ZOO_NAMES

    seen: list[list[str]] = []

    def fake_resolve(names):
        seen.append(list(names))
        raise ConfigError("stop here")

    monkeypatch.setattr(models, "resolve_models", fake_resolve)
    assert main(["profile", "--out", str(tmp_path / "o")]) == 2
    assert seen == [list(ZOO_NAMES)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "missing.onnx"], "missing.onnx"),
        (["--models", "tiny", "--repeats", "0"], "--repeats"),
        (["--models", "tiny", "--threads", "0"], "--threads"),
        (["--models", "tiny", "--provider", "NoSuchExecutionProvider"], "NoSuchExecutionProvider"),
        (["--models", "tiny", "--device", "tpu"], "unknown device 'tpu'"),
        (["--models", "tiny", "--device", "onnxruntime-warp"], "variant 'warp'"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, tmp_path: Path, cache: Path, capsys):
    assert main(["profile", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_cli_out_must_be_a_folder(tmp_path: Path, cache: Path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["profile", "--models", "tiny", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_solo_latency_never_extrapolates_to_zero():
    # Noise made the largest batch faster than the one before: a straight line through
    # them reaches zero at 100 rows, and a scheduler divides by the solo latency.
    profile = _hand_profile()
    profile.models["m"][8] = BatchProfile(LatencyStats(0.020, 0.022, 0.01, 5), {})
    assert profile.solo_latency("m", 100) == pytest.approx(0.020)
    assert profile.solo_latency("m", 6) == pytest.approx(0.035)  # interpolation unchanged


def test_features_of_a_single_batch_size_profile():
    profile = _hand_profile()
    profile.models["m"] = {1: profile.models["m"][1]}
    assert profile.features("m", 4) == profile.models["m"][1].features


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("models",), [], "models: expected an object"),
        (("models", "m"), [1], "models.m: expected an object"),
        (("models", "m"), {}, "models.m: expected an object"),
        (("models", "m", "1", "latency_ms", "median"), -1, "models.m.1.latency_ms.median"),
        (("models", "m", "1", "latency_ms", "median"), 0, "models.m.1.latency_ms.median"),
        (("models", "m", "1", "latency_ms", "cv"), "x", "models.m.1.latency_ms.cv"),
        (("models", "m", "1", "features"), "x", "models.m.1: expected an object"),
        (("models", "m", "1", "features", "flops"), None, "models.m.1.features.flops"),
        (("machine",), [], "expected an object with 'machine'"),
    ],
)
def test_profile_load_names_the_bad_field(tmp_path: Path, path, value, named):
    data = _hand_profile().to_json()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (tmp_path / "profile.json").write_text(json.dumps(data))
    with pytest.raises(PredlatError, match=re.escape(named)):
        Profile.load(tmp_path / "profile.json")


def test_profile_load_refuses_a_batch_size_below_one(tmp_path: Path):
    data = _hand_profile().to_json()
    data["models"]["m"]["0"] = data["models"]["m"]["1"]
    (tmp_path / "profile.json").write_text(json.dumps(data))
    with pytest.raises(PredlatError, match=r"models\.m\.0: batch size"):
        Profile.load(tmp_path / "profile.json")
