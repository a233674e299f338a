"""The built-in zoo: deterministic builds, cached files, runnable at batch 1 and 8."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from predlat.models import zoo
from predlat.models.layers import GraphBuilder
from predlat.models.registry import resolve_model
from predlat.models.spec import ModelSpec


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def zoo_specs(zoo_root: Path) -> dict[str, ModelSpec]:
    """Every zoo model built once per test session."""
    return {name: resolve_model(name, root=zoo_root) for name in zoo.BUILDERS}


def _session(spec: ModelSpec) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(spec.path), options, providers=["CPUExecutionProvider"])


def _graph(spec: ModelSpec) -> onnx.GraphProto:
    return onnx.load(str(spec.path)).graph


def test_zoo_names_and_builders_are_named_functions() -> None:
    assert zoo.ZOO_NAMES == ("resnet", "yolo", "roberta", "vit", "vgg", "convnext")
    assert set(zoo.BUILDERS) == {*zoo.ZOO_NAMES, "tiny"}
    for name, builder in zoo.BUILDERS.items():
        # The cache key hashes the builder's source: it must be a real, named function.
        assert inspect.isfunction(builder) and builder.__name__ == name


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_build_is_deterministic(name: str, zoo_specs: dict[str, ModelSpec]) -> None:
    spec = zoo_specs[name]
    fresh = zoo.BUILDERS[name]()
    assert fresh.SerializeToString() == spec.path.read_bytes()  # two builds, same bytes
    assert fresh.graph.name == name
    onnx.checker.check_model(fresh)
    for tensor in spec.inputs:
        assert tensor.shape[0] is None and all(d is not None for d in tensor.shape[1:])
    for value in fresh.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_runs_at_batch_1_and_8(name: str, zoo_specs: dict[str, ModelSpec]) -> None:
    spec = zoo_specs[name]
    session = _session(spec)
    feeds = spec.random_inputs(8, np.random.default_rng(0))
    outs8 = session.run(None, feeds)
    outs1 = session.run(None, {k: v[:1] for k, v in feeds.items()})
    for out1, out8 in zip(outs1, outs8, strict=True):
        assert out8.shape[0] == 8 and out1.shape[0] == 1
        assert np.isfinite(out8).all() and np.isfinite(out1).all()
        assert out8.std() > 0  # random weights, not a constant output
        # A sample's answer does not depend on its batch-mates.
        np.testing.assert_allclose(out8[:1], out1, rtol=1e-3, atol=1e-3)


def test_cache_is_reused(zoo_root: Path, zoo_specs: dict[str, ModelSpec]) -> None:
    first = zoo_specs["resnet"]
    mtime = first.path.stat().st_mtime_ns
    again = resolve_model("resnet", root=zoo_root)
    assert again.path == first.path
    assert again.path.stat().st_mtime_ns == mtime
    assert again.digest == first.digest


def tiny_changed() -> onnx.ModelProto:
    """A different definition of `tiny` (another width): must get its own file."""
    g = GraphBuilder(seed=1)
    x = g.input("x", [16])
    y = g.linear(g.relu(g.linear(x, 16, 8, gain=2.0)), 8, 4)
    return g.build("tiny", ["x"], [g.named(y, "y")])


def test_changed_definition_builds_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = resolve_model("tiny", root=tmp_path)
    monkeypatch.setitem(zoo.BUILDERS, "tiny", tiny_changed)
    new = resolve_model("tiny", root=tmp_path)
    assert new.path != old.path and new.digest != old.digest
    assert old.path.exists() and new.path.exists()
    assert new.path.read_bytes() == tiny_changed().SerializeToString()


def test_roberta_uses_its_attention_mask(zoo_specs: dict[str, ModelSpec]) -> None:
    spec = zoo_specs["roberta"]
    assert [(t.name, t.dtype) for t in spec.inputs] == [
        ("input_ids", np.dtype(np.int64)),
        ("attention_mask", np.dtype(np.int64)),
    ]
    session = _session(spec)
    ids = np.random.default_rng(1).integers(0, 30_000, size=(2, spec.inputs[0].shape[1]))
    full = np.ones_like(ids)
    half = full.copy()
    half[:, full.shape[1] // 2 :] = 0
    out_full = session.run(None, {"input_ids": ids, "attention_mask": full})[0]
    out_half = session.run(None, {"input_ids": ids, "attention_mask": half})[0]
    assert np.isfinite(out_half).all()
    assert not np.allclose(out_full, out_half)


def _initializer_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    return {t.name: int(np.prod(t.dims)) for t in graph.initializer}


def _attr(node: onnx.NodeProto, name: str) -> object:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_models_have_their_character(zoo_specs: dict[str, ModelSpec]) -> None:
    graphs = {name: _graph(spec) for name, spec in zoo_specs.items()}
    ops = {name: [n.op_type for n in g.node] for name, g in graphs.items()}
    sizes = {name: _initializer_sizes(g) for name, g in graphs.items()}

    assert ops["resnet"].count("Add") >= 16 and "Conv" in ops["resnet"]  # residual blocks
    yolo_out = zoo_specs["yolo"].outputs[0]
    assert yolo_out.shape[1] == 84 and yolo_out.shape[2] > 100
    assert {"Split", "Concat", "MaxPool", "Resize", "Sigmoid"} <= set(ops["yolo"])
    gather_tables = [
        sizes["roberta"][n.input[0]]
        for n in graphs["roberta"].node
        if n.op_type == "Gather" and n.input[0] in sizes["roberta"]
    ]
    assert max(gather_tables) >= 30_000 * 256  # the large embedding table
    assert {"Softmax", "Erf", "LayerNormalization"} <= set(ops["roberta"])
    patch = next(n for n in graphs["vit"].node if n.op_type == "Conv")
    assert _attr(patch, "strides") == [16, 16] and ops["vit"].count("Softmax") >= 4
    fc = [sizes["vgg"][n.input[1]] for n in graphs["vgg"].node if n.op_type == "MatMul"]
    assert sum(fc) * 4 >= 10e6  # tens of MB of fully-connected weights
    depthwise = [
        n for n in graphs["convnext"].node if n.op_type == "Conv" and _attr(n, "group") > 1
    ]
    assert depthwise and all(_attr(n, "kernel_shape") == [7, 7] for n in depthwise)


def test_zoo_files_stay_modest(zoo_specs: dict[str, ModelSpec]) -> None:
    total = sum(zoo_specs[name].path.stat().st_size for name in zoo.ZOO_NAMES)
    assert total < 150e6
