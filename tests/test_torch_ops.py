"""The ONNX -> torch lowering, one op at a time, against ONNX Runtime: each case is a
one-node graph whose first input has a dynamic batch axis and whose other inputs are
constants; the lowered module must match ORT and read nothing back to the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from predlat.models.torch_host_reads import count_host_reads  # noqa: E402
from predlat.models.torch_lowering import lower_onnx  # noqa: E402

_I64 = np.int64


@dataclass
class Case:
    op: str
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: tuple[Any, ...] = ()  # inputs after x; None = omitted optional input
    shape: tuple[int, ...] = (3, 4, 5)  # x's shape after the batch axis
    outputs: int = 1
    opset: int = 17
    positive: bool = False  # x in (0.1, 2) for ops defined only there
    id: str = ""


def _f(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


CASES = [
    *(Case(op) for op in ("Abs", "Neg", "Exp", "Floor", "Ceil", "Sign", "Sin", "Cos")),
    *(Case(op) for op in ("Softplus", "Softsign", "HardSwish", "Round")),
    Case("Mish", opset=18),
    *(Case(op, positive=True) for op in ("Sqrt", "Log", "Reciprocal")),
    Case("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    Case("LeakyRelu", {"alpha": 0.1}),
    Case("Elu", {"alpha": 0.5}),
    Case("Gelu", {"approximate": "tanh"}, opset=20),
    Case("PRelu", consts=(_f(0.1, 0.2, 0.3).reshape(3, 1, 1),)),
    Case("Clip", {"min": -0.5, "max": 0.5}, opset=6, id="Clip-attrs"),
    Case("Pow", consts=(_f(3.0),), positive=True),
    Case("Mod", {"fmod": 1}, consts=(_f(0.7),)),
    Case("Max", consts=(_f(0.2),)),
    Case("Mean", consts=(_f(1.0),)),
    Case("Div", consts=(_f(3.0),)),
    Case("ReduceMax", {"axes": [1, 3], "keepdims": 0}),
    Case("ReduceMin", {"axes": [-1]}),
    Case("ReduceMean", {"axes": [2], "keepdims": 0}),
    Case("ReduceSum", {"keepdims": 0}, consts=(np.array([1, 2], _I64),)),
    Case("ReduceProd", {"axes": [1, 2]}),
    Case("ReduceL2", {"axes": [3]}),
    Case("ReduceSumSquare", {"axes": [1]}),
    Case("ArgMax", {"axis": 1, "keepdims": 0}),
    Case("ArgMin", {"axis": 2, "select_last_index": 1}),
    Case("Softmax", {"axis": 2}, opset=11, id="Softmax-opset11"),
    Case("LogSoftmax", {"axis": 1}),
    Case("Transpose", {"perm": [0, 3, 1, 2]}),
    Case("Flatten", {"axis": 2}),
    Case("Unsqueeze", consts=(np.array([-1, 1], _I64),)),
    Case("Squeeze", consts=(np.array([2], _I64),), shape=(3, 1, 5)),
    Case("Tile", consts=(np.array([1, 2, 1, 3], _I64),)),
    Case("Expand", consts=(np.array([3, 1, 5], _I64),), shape=(1, 4, 1)),
    Case("Split", {"axis": 2, "num_outputs": 2}, outputs=2, opset=18),
    Case("Split", {"axis": 3}, consts=(np.array([1, 4], _I64),), outputs=2, id="Split-sizes"),
    Case("Slice", consts=(*(np.array(v, _I64) for v in ([1, 4], [3, 0], [1, 3], [1, -2])),)),
    Case("TopK", {"axis": -1}, consts=(np.array([2], _I64),), outputs=2),
    Case("CumSum", {"exclusive": 1, "reverse": 1}, consts=(np.array(3, _I64),)),
    Case("Trilu", {"upper": 0}, consts=(np.array(1, _I64),)),
    Case("Einsum", {"equation": "bchw->bwc"}),
    Case("MaxPool", {"kernel_shape": [3, 3], "pads": [0, 1, 1, 0], "ceil_mode": 1}),
    Case("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    Case("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    Case("AveragePool", {"kernel_shape": [2, 3], "pads": [1, 1, 1, 1]}, id="AvgPool-excl"),
    Case("GlobalMaxPool"),
    Case(
        "Conv",
        {"group": 3, "strides": [2, 2], "auto_pad": "SAME_LOWER"},
        consts=(np.random.default_rng(1).standard_normal((6, 1, 3, 3)).astype(np.float32),),
        shape=(3, 9, 8),
    ),
    Case(
        "Conv",
        {"dilations": [2, 1], "pads": [0, 1, 2, 0]},
        consts=(
            np.random.default_rng(2).standard_normal((2, 3, 3, 2)).astype(np.float32),
            _f(1, -1),
        ),
        id="Conv-dilated-asymmetric",
    ),
    Case("InstanceNormalization", consts=(_f(1.0, 2.0, 0.5), _f(0.0, 0.1, -0.1))),
    Case(
        "LayerNormalization",
        {"axis": 2},
        consts=(np.full((4, 5), 1.5, np.float32), np.full((4, 5), 0.1, np.float32)),
    ),
    Case("BatchNormalization", consts=(_f(1, 2, 3), _f(0, 1, 0), _f(0.1, 0, -0.1), _f(1, 2, 3))),
    Case(
        "Gemm",
        {"alpha": 0.5, "beta": 2.0},
        consts=(np.ones((7, 2), np.float32), _f(1, 2)),
        shape=(7,),
    ),
    Case(
        "Resize",
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
        consts=(None, _f(1, 1, 3, 2)),
        id="Resize-nearest",
    ),
    Case(
        "Resize",
        {"mode": "linear", "coordinate_transformation_mode": "align_corners", "axes": [2, 3]},
        consts=(None, None, np.array([7, 9], _I64)),
        opset=18,
        id="Resize-linear-sizes",
    ),
    Case("Pad", {"mode": "edge"}, consts=(np.array([0, 0, 1, 2, 0, 0, 2, 1], _I64),)),
    Case("Pad", consts=(np.array([0, 1, 0, 0, 0, 1, 0, 0], _I64), _f(-3.0)), id="Pad-const"),
    Case("Dropout"),
]


def _model(case: Case, batch_axis: str = "batch") -> onnx.ModelProto:
    names = ["x"]
    inits = []
    for i, const in enumerate(case.consts):
        if const is None:
            names.append("")
            continue
        names.append(f"c{i}")
        inits.append(numpy_helper.from_array(np.asarray(const), f"c{i}"))
    outs = [f"y{i}" for i in range(case.outputs)]
    node = helper.make_node(case.op, names, outs, **case.attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_axis, *case.shape])
    ys = [helper.make_empty_tensor_value_info(o) for o in outs]
    graph = helper.make_graph([node], case.op, [x], ys, initializer=inits)
    opsets = [helper.make_opsetid("", case.opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.mark.parametrize("case", CASES, ids=[c.id or c.op for c in CASES])
def test_op_matches_onnxruntime(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "op.onnx"
    onnx.save(_model(case), str(path))
    module = lower_onnx(path)
    rng = np.random.default_rng(0)
    for batch in (1, 2):
        shape = (batch, *case.shape)
        x = rng.uniform(0.1, 2.0, shape) if case.positive else rng.standard_normal(shape)
        x = x.astype(np.float32)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )
        with torch.no_grad():
            got = module(torch.from_numpy(x))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)
    assert count_host_reads(module, [torch.from_numpy(x)]) == []
