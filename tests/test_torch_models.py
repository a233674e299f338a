"""Models on the torch device: the ONNX lowering against ONNX Runtime, host reads,
`.pt2` programs, and the full-size models (those needing torchvision or transformers
skip where those do not import)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from predlat.errors import ModelLoadError, PredlatError  # noqa: E402
from predlat.models import torch_zoo, zoo  # noqa: E402
from predlat.models.registry import resolve_model, zoo_model_path  # noqa: E402
from predlat.models.spec import PT2, TORCH, load_model_spec  # noqa: E402
from predlat.models.torch_host_reads import (  # noqa: E402
    count_host_reads,
    count_uploads_after_warm_up,
    host_traffic,
)
from predlat.models.torch_load import example_inputs, torch_module_for  # noqa: E402
from predlat.models.torch_lowering import lower_onnx  # noqa: E402

ZOO = tuple(zoo.BUILDERS)  # the six plus tiny
# Batch 8 on every model takes ~25 s more on a loaded 2-core machine; these three cover
# the batch-dependent paths (Reshape copying the batch axis, masks broadcast per batch).
# All seven were checked at batch 8 too when the lowering was written.
BATCH_8 = ("tiny", "yolo", "roberta")


def _close_to_ort(path: Path, module: torch.nn.Module, batch: int) -> float:
    """Largest |torch - ORT| over all outputs, relative to max(1, max |ORT|): absolute
    for outputs of magnitude <= 1, relative for larger ones (resnet logits reach ~27)."""
    spec = load_model_spec(path)
    feeds = spec.random_inputs(batch, np.random.default_rng(batch))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        worst = max(worst, float(np.abs(g.numpy() - w).max()) / max(1.0, float(np.abs(w).max())))
    return worst


@pytest.mark.parametrize("name", ZOO)
def test_lowered_zoo_matches_onnxruntime(name: str) -> None:
    path = zoo_model_path(name)
    module = lower_onnx(path)
    assert not module.training
    for batch in (1, 8) if name in BATCH_8 else (1,):
        assert _close_to_ort(path, module, batch) <= 2e-5, (name, batch)


@pytest.mark.parametrize("name", ZOO)
def test_lowered_zoo_is_capture_safe(name: str) -> None:
    """No device value read on the host, no copy to the device after warm-up."""
    spec = resolve_model(name)
    module = torch_module_for(spec)
    assert count_host_reads(module, example_inputs(spec, 4)) == []
    assert count_uploads_after_warm_up(module, example_inputs(spec, 4)) == []


def test_host_read_counter_sees_item_bool_and_copies() -> None:
    class Reads(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            scale = float(x.sum())  # _local_scalar_dense
            if x.max() > 0:  # bool of a tensor
                x = x + scale
            return (x.cpu(),)  # a copy to the host

    assert len(count_host_reads(Reads(), [torch.ones(2, 3)])) == 3


def _graph(
    nodes: list, inits: list, inputs: list, outputs: list, opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _float_io(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _exporter_style_model() -> onnx.ModelProto:
    """Ops exporters write beyond the zoo's: shape arithmetic from Shape (batch-dependent),
    Gemm, BatchNormalization, Clip, Pad, AveragePool, linear Resize, a reversed Slice,
    Where, and a batch-shaped constant built by ConstantOfShape + Expand."""
    rng = np.random.default_rng(0)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3),
        init("bn_s", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        init("bn_b", rng.standard_normal(4).astype(np.float32)),
        init("bn_m", rng.standard_normal(4).astype(np.float32) * 0.1),
        init("bn_v", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        init("lo", np.array(0.0, np.float32)),
        init("hi", np.array(6.0, np.float32)),
        init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        init("scales", np.array([1, 1, 2, 2], np.float32)),
        init("zero", np.array(0, np.int64)),  # a scalar index, as exporters write
        init("minus1", np.array([-1], np.int64)),
        init("axis0", np.array([0], np.int64)),
        init("starts", np.array([-1], np.int64)),
        init("ends", np.array([-1000], np.int64)),
        init("axes", np.array([1], np.int64)),
        init("steps", np.array([-1], np.int64)),
        init("gw", rng.standard_normal((5, 1024)).astype(np.float32) * 0.03),
        init("gb", rng.standard_normal(5).astype(np.float32)),
        init("half", np.array(0.5, np.float32)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        n("Clip", ["bn", "lo", "hi"], ["r6"]),
        n("Pad", ["r6", "pads"], ["p"], mode="reflect"),
        n("AveragePool", ["p"], ["ap"], kernel_shape=[3, 3], strides=[1, 1]),
        n("Resize", ["ap", "", "scales"], ["up"], mode="linear"),
        n("Slice", ["up", "starts", "ends", "axes", "steps"], ["rev"]),  # channels reversed
        n("Shape", ["x"], ["shape"]),
        n("Gather", ["shape", "zero"], ["batch_scalar"], axis=0),
        n("Unsqueeze", ["batch_scalar", "axis0"], ["batch"]),
        n("Concat", ["batch", "minus1"], ["flat_shape"], axis=0),
        n("Reshape", ["rev", "flat_shape"], ["flat"]),
        n("Gemm", ["flat", "gw", "gb"], ["logits"], transB=1),
        n("Concat", ["batch", "minus1"], ["ones_shape"], axis=0),
        n("Shape", ["logits"], ["logits_shape"]),
        n(
            "ConstantOfShape",
            ["logits_shape"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        n("Greater", ["logits", "ones"], ["big"]),
        n("Mul", ["logits", "half"], ["halved"]),
        n("Where", ["big", "halved", "logits"], ["y"]),
    ]
    x = _float_io("x", ["batch", 3, 8, 8])
    return _graph(nodes, inits, [x], [_float_io("y", ["batch", 5])])


def test_lowering_handles_exporter_ops_with_host_shape_arithmetic(tmp_path: Path) -> None:
    path = tmp_path / "exported.onnx"
    onnx.save(_exporter_style_model(), str(path))
    module = lower_onnx(path)
    for batch in (1, 3):
        assert _close_to_ort(path, module, batch) <= 2e-5
    x = torch.randn(4, 3, 8, 8)
    # The batch-shaped constant is copied to the device on the first call of a shape only
    # (meta stands in for the device here).
    assert len(host_traffic(module, [x]).uploads) == 1
    assert count_uploads_after_warm_up(module, [x]) == []
    assert count_host_reads(module, [x]) == []


def test_unsupported_op_names_the_op_and_the_file(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("FusedGemm", ["x", "x"], ["f"], domain="com.microsoft"),
    ]
    model = _graph(nodes, [], [_float_io("x", ["batch", 4])], [_float_io("f", ["batch", 4])])
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError) as info:
        lower_onnx(path)
    message = str(info.value)
    assert "odd.onnx" in message and "NonZero" in message and "com.microsoft.FusedGemm" in message


def test_data_dependent_shape_is_refused_when_lowering(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["shape"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = _graph(nodes, [], [_float_io("x", ["batch"])], [_float_io("y", None)])
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="data-dependent shape"):
        lower_onnx(path)


# -- torch.export programs -----------------------------------------------------------------
class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x)) + bias
        return {"logits": self.head(h), "hidden": h}


def _export(tmp_path: Path, dynamic: bool) -> Path:
    torch.manual_seed(0)
    module = _TwoHeads().eval()
    args = (torch.randn(2, 6), torch.randn(2, 8))
    batch = torch.export.Dim("batch")
    shapes = {"x": {0: batch}, "bias": {0: batch}} if dynamic else None
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    path = tmp_path / ("heads.pt2" if dynamic else "fixed.pt2")
    torch.export.save(program, str(path))
    return path


def test_pt2_round_trip(tmp_path: Path) -> None:
    path = _export(tmp_path, dynamic=True)
    spec = resolve_model(str(path))
    assert spec.format == PT2 and spec.name == "heads"
    assert [(t.name, t.shape) for t in spec.inputs] == [("x", (None, 6)), ("bias", (None, 8))]
    assert [t.shape for t in spec.outputs] == [(None, 2), (None, 8)]
    module = torch_module_for(spec)
    torch.manual_seed(0)
    reference = _TwoHeads().eval()
    for batch in (1, 5):
        x, bias = example_inputs(spec, batch, seed=batch)
        want = reference(x, bias)
        got = module(x, bias)
        assert isinstance(got, tuple) and len(got) == 2
        torch.testing.assert_close(got[0], want["logits"])
        torch.testing.assert_close(got[1], want["hidden"])
    assert count_host_reads(module, example_inputs(spec, 3)) == []


def test_pt2_needs_a_dynamic_batch_and_the_torch_device(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"fixed first axis.*Dim"):
        resolve_model(str(_export(tmp_path, dynamic=False)))
    spec = resolve_model(str(_export(tmp_path, dynamic=True)))
    with pytest.raises(ModelLoadError, match="--device torch"):
        _ = spec.onnx_path
    not_a_program = tmp_path / "junk.pt2"
    not_a_program.write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match=r"not a torch\.export program"):
        resolve_model(str(not_a_program))


# -- full-size models ----------------------------------------------------------------------
def test_yolov8n_shape_size_seed_and_host_reads() -> None:
    spec = resolve_model("yolov8n")
    assert spec.format == TORCH and spec.path is None
    with pytest.raises(ModelLoadError, match="--device torch"):
        _ = spec.onnx_path
    state = torch.random.get_rng_state()
    first, second = torch_module_for(spec), torch_module_for(spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    weights, again = first.state_dict(), second.state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)  # seeded
    assert 3.0e6 < sum(p.numel() for p in first.parameters()) < 3.3e6
    (x,) = example_inputs(spec, 1)
    with torch.no_grad():
        (y,) = first(x)
    assert y.shape == (1, 84, 8400) and y.dtype == torch.float32
    assert torch.isfinite(y).all() and ((y[:, 4:] >= 0) & (y[:, 4:] <= 1)).all()
    assert count_host_reads(first, example_inputs(spec, 2)) == []


def _imports(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:  # e.g. torchvision built for another torch fails with RuntimeError
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, m in torch_zoo.FULL_SIZE.items() if m.needs])
def test_full_size_model_shapes_and_host_reads(name: str) -> None:
    needs = torch_zoo.FULL_SIZE[name].needs
    if not _imports(needs):
        pytest.skip(f"{needs} does not import here")
    spec = resolve_model(name)
    module = torch_module_for(spec)
    assert count_host_reads(module, example_inputs(spec, 4)) == []  # on meta: no arithmetic
    inputs = example_inputs(spec, 2)
    with torch.no_grad():
        outputs = module(*inputs)
    assert [tuple(o.shape) for o in outputs] == [t.sample_shape(2) for t in spec.outputs]
    assert all(o.dtype == torch.float32 and o.std() > 0 for o in outputs)  # ViT's head too


def test_full_size_model_without_its_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if missing
    with pytest.raises(PredlatError, match=r"needs torchvision.*predlat\[vision\]"):
        resolve_model("resnet50")


class _ExporterPatterns(torch.nn.Module):
    """What real exports are full of: sizes read from `x.shape`, positions from arange,
    views with a computed batch, a boolean mask through `masked_fill`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.pos = torch.nn.Embedding(64, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv(images)
        batch, channels = h.shape[0], h.shape[1]
        tokens = h.view(batch, channels, -1).transpose(1, 2)
        positions = torch.arange(tokens.shape[1], device=images.device)
        tokens = tokens + self.pos(positions).unsqueeze(0)
        mask = torch.zeros(tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
        out, _ = self.attn(tokens, tokens, tokens, attn_mask=mask, need_weights=False)
        scores = self.head(out.mean(1))
        return scores.masked_fill(scores > 1.0, 1.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # MultiheadAttention's checks
def test_lowering_a_torch_onnx_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ExporterPatterns().eval()
    path = tmp_path / "exported.onnx"
    try:
        torch.onnx.export(
            module,
            (torch.randn(2, 3, 16, 16),),
            str(path),
            input_names=["images"],
            output_names=["scores"],
            dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
            dynamo=False,
        )
    except Exception as exc:  # the TorchScript exporter may be gone from a later torch
        pytest.skip(f"torch.onnx.export failed here: {exc}")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Reshape"} <= ops  # the shape arithmetic is in the graph
    lowered = lower_onnx(path)
    for batch in (1, 3):
        assert _close_to_ort(path, lowered, batch) <= 2e-5
    assert count_host_reads(lowered, [torch.randn(3, 3, 16, 16)]) == []
