"""A user's own .onnx file is a model; bad files and names give clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from predlat.errors import ModelLoadError, UnknownModelError
from predlat.models import zoo
from predlat.models.layers import GraphBuilder
from predlat.models.registry import resolve_model


def _mixed_inputs_model() -> onnx.ModelProto:
    """Token ids (int64) and dense features (float) in, one float vector out."""
    g = GraphBuilder(seed=3)
    ids = g.input("ids", [8], TensorProto.INT64)
    feats = g.input("feats", [8, 4])
    tokens = g.embedding(ids, 100, 4)  # [batch, 8, 4]
    out = g.reduce_mean(g.add(tokens, feats), [1])
    return g.build("mixed", ["ids", "feats"], [g.named(out, "pooled")])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _expect_load_error(path: Path, reason: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_model(str(path))
    message = str(info.value)
    assert path.name in message and reason in message
    assert "\n" not in message


def test_user_file_round_trips(tmp_path: Path) -> None:
    spec = resolve_model(str(_save(zoo.tiny(), tmp_path / "x.onnx")))
    assert spec.name == "x" and spec.path == tmp_path / "x.onnx"
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [
        ("x", np.dtype(np.float32), (None, 16))
    ]
    assert [(t.name, t.shape) for t in spec.outputs] == [("y", (None, 4))]


def test_user_file_with_int_and_float_inputs(tmp_path: Path) -> None:
    spec = resolve_model(str(_save(_mixed_inputs_model(), tmp_path / "mixed.onnx")))
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [
        ("ids", np.dtype(np.int64), (None, 8)),
        ("feats", np.dtype(np.float32), (None, 8, 4)),
    ]
    feeds = spec.random_inputs(3, np.random.default_rng(0))
    assert feeds["ids"].shape == (3, 8) and feeds["feats"].shape == (3, 8, 4)


def test_text_file_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n")
    _expect_load_error(path, "not an ONNX model")


def test_random_bytes_are_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    _expect_load_error(path, "not an ONNX model")


def test_fixed_batch_axis_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _expect_load_error(_save(model, tmp_path / "fixed.onnx"), "fixed first axis")


def test_model_onnxruntime_cannot_load(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _expect_load_error(_save(model, tmp_path / "broken.onnx"), "ONNX Runtime cannot load it")


def test_missing_file(tmp_path: Path) -> None:
    _expect_load_error(tmp_path / "absent.onnx", "no such file")


def test_unknown_name() -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        resolve_model("no-such-model")


@pytest.mark.skipif(
    importlib.util.find_spec("predlat.cli.profile") is None, reason="profile command not built"
)
def test_cli_reports_a_bad_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from predlat.cli import main

    bad = tmp_path / "garbage.onnx"
    bad.write_text("not a model")
    code = main(["profile", "--models", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "garbage.onnx" in err
    assert "Traceback" not in err
