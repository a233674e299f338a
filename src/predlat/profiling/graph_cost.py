"""FLOPs and bytes moved by one batch of an ONNX model, counted from the graph.

These are static estimates from tensor shapes (ONNX shape inference with the batch axis
set to the batch size), not measurements. They are what makes models comparable by
resource character: a convolution-heavy model has many FLOPs per byte, an embedding or
MLP-heavy one few.

FLOPs (a multiply-add counts as 2):

- Conv: 2 * N * Cout * prod(output spatial) * (Cin / groups) * prod(kernel), plus one add
  per output element when there is a bias.
- ConvTranspose: 2 * prod(input) * (Cout / groups) * prod(kernel) (+ bias per output).
- MatMul: 2 * prod(output) * K, so broadcast batch dimensions are included.
- Gemm: 2 * M * N * K, plus M * N when C is given.
- MaxPool / AveragePool / LpPool: kernel area per output element.
- Global pooling and Reduce*/ArgMax/ArgMin: one per input element.
- Elementwise ops, activations, normalization, softmax: a fixed count per output element,
  `PER_ELEMENT_FLOPS` below (transcendentals count a few flops, e.g. Exp = 4).
- Everything else (data movement, shape ops, Gather): 0.

Bytes moved: per node, the bytes of all its inputs and outputs (weights included). This is
an upper bound of memory traffic that assumes nothing stays in cache between nodes. Two
exceptions keep it from being absurd: ops that only relabel a buffer (`VIEW_OPS`: Reshape,
Squeeze, ...) move nothing, and Gather counts its indices plus the gathered rows read and
written (2 x output) rather than the whole table, which is what an embedding lookup reads.

A node whose tensors' shapes cannot be inferred (dynamic shapes that depend on data,
unknown custom ops, control flow) counts 0 and is reported in `unknown_nodes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

# FLOPs per output element of elementwise-like ops. Rough but fixed and documented:
# 1 for arithmetic, comparison and piecewise-linear activations; 2 for an inference-time
# affine normalization; 4 for one transcendental; softmax = max, sub, exp, sum, div.
PER_ELEMENT_FLOPS: dict[str, float] = {
    **dict.fromkeys(
        (
            "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Max", "Min", "Sum", "Mean",
            "Clip", "LeakyRelu", "PRelu", "ThresholdedRelu", "Reciprocal", "Sqrt", "Pow",
            "Floor", "Ceil", "Round", "Sign", "Mod", "Equal", "Less", "Greater",
            "LessOrEqual", "GreaterOrEqual", "Where", "Not", "And", "Or", "Xor",
        ),
        1.0,
    ),
    **dict.fromkeys(("BatchNormalization", "HardSigmoid"), 2.0),
    **dict.fromkeys(("HardSwish",), 3.0),
    **dict.fromkeys(
        (
            "Exp", "Log", "Tanh", "Sigmoid", "Erf", "Sin", "Cos", "Tan", "Softplus",
            "Softsign", "Elu", "Selu", "Celu",
        ),
        4.0,
    ),
    **dict.fromkeys(("Softmax", "LogSoftmax"), 5.0),
    **dict.fromkeys(
        ("Gelu", "Mish", "LayerNormalization", "InstanceNormalization", "GroupNormalization"),
        8.0,
    ),
}  # fmt: skip

# One flop per INPUT element (reductions over an axis or the whole spatial extent).
PER_INPUT_ELEMENT_FLOPS: dict[str, float] = {
    **dict.fromkeys(
        (
            "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
            "ReduceMin", "ReduceProd", "ArgMax", "ArgMin", "ReduceLogSumExp",
        ),
        1.0,
    ),
    **dict.fromkeys(("ReduceL1", "ReduceL2", "ReduceSumSquare", "GlobalLpPool"), 2.0),
}  # fmt: skip

WINDOW_POOL_OPS = frozenset(("MaxPool", "AveragePool", "LpPool"))

# Ops that only relabel an existing buffer (or produce metadata): no traffic counted.
VIEW_OPS = frozenset(
    ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Shape", "Size",
     "Constant")
)  # fmt: skip

# Ops with subgraphs: their bodies are not counted.
_SUBGRAPH_OPS = frozenset(("If", "Loop", "Scan"))


@dataclass(frozen=True)
class GraphCost:
    """Static cost of one batch. `per_op` and `per_op_bytes` are keyed by op type."""

    flops: float
    bytes: float
    per_op: dict[str, float] = field(default_factory=dict)  # op type -> FLOPs
    per_op_bytes: dict[str, float] = field(default_factory=dict)  # op type -> bytes
    unknown_nodes: int = 0
    total_nodes: int = 0

    @property
    def arith_intensity(self) -> float:
        return self.flops / self.bytes if self.bytes > 0 else 0.0


@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    itemsize: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize


def graph_cost(model: onnx.ModelProto | str | Path, batch_size: int) -> GraphCost:
    """FLOPs and bytes moved by the graph for one batch of `batch_size` (axis 0 of every
    input). `model` is a loaded ModelProto (not modified) or a path to an .onnx file."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    inferred = _infer_with_batch(proto, batch_size)
    tensors = _tensor_table(inferred.graph)
    flops_by_op: dict[str, float] = {}
    bytes_by_op: dict[str, float] = {}
    unknown = 0
    for node in inferred.graph.node:
        cost = _node_cost(node, tensors)
        if cost is None:
            unknown += 1
            continue
        flops, moved = cost
        flops_by_op[node.op_type] = flops_by_op.get(node.op_type, 0.0) + flops
        bytes_by_op[node.op_type] = bytes_by_op.get(node.op_type, 0.0) + moved
    return GraphCost(
        flops=float(sum(flops_by_op.values())),
        bytes=float(sum(bytes_by_op.values())),
        per_op=flops_by_op,
        per_op_bytes=bytes_by_op,
        unknown_nodes=unknown,
        total_nodes=len(inferred.graph.node),
    )


def graph_costs(
    model: onnx.ModelProto | str | Path, batch_sizes: Iterable[int]
) -> dict[int, GraphCost]:
    """`graph_cost` for several batch sizes, loading the file once."""
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    return {n: graph_cost(proto, n) for n in batch_sizes}


# -- shape inference -------------------------------------------------------------------
def _infer_with_batch(proto: onnx.ModelProto, batch_size: int) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch_size
    # Intermediate and output shapes are recomputed; stale declared ones (a fixed batch of
    # 1 written by an exporter, say) would only conflict with the inferred ones.
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # e.g. a model over the 2 GB protobuf limit: count it as unknown
        return model


def _tensor_table(graph: onnx.GraphProto) -> dict[str, _Tensor]:
    table: dict[str, _Tensor] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = _from_value_info(value)
        if tensor is not None:
            table[value.name] = tensor
    for init in graph.initializer:
        itemsize = _itemsize(init.data_type)
        if itemsize:
            table[init.name] = _Tensor(tuple(int(d) for d in init.dims), itemsize)
    return table


def _from_value_info(value: onnx.ValueInfoProto) -> _Tensor | None:
    if not value.type.HasField("tensor_type"):
        return None
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims = []
    for dim in ttype.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    itemsize = _itemsize(ttype.elem_type)
    return _Tensor(tuple(dims), itemsize) if itemsize else None


def _itemsize(elem_type: int) -> int:
    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 0  # strings and undefined types: size unknown


# -- per-node cost ---------------------------------------------------------------------
def _node_cost(node: onnx.NodeProto, tensors: dict[str, _Tensor]) -> tuple[float, float] | None:
    """(flops, bytes) of one node, or None when a shape it needs is unknown."""
    if node.op_type in _SUBGRAPH_OPS:
        return None
    names = [n for n in (*node.input, *node.output) if n]
    if any(n not in tensors for n in names):
        return None
    inputs = [tensors[n] if n else None for n in node.input]
    outputs = [tensors[n] for n in node.output if n]
    flops = _node_flops(node, inputs, outputs)
    if flops is None:
        return None
    return float(flops), float(_node_bytes(node, inputs, outputs))


def _node_bytes(node: onnx.NodeProto, inputs: list[_Tensor | None], outputs: list[_Tensor]) -> int:
    if node.op_type in VIEW_OPS:
        return 0
    if node.op_type == "Gather" and len(inputs) >= 2 and inputs[1] is not None:
        return inputs[1].nbytes + 2 * sum(t.nbytes for t in outputs)
    return sum(t.nbytes for t in inputs if t is not None) + sum(t.nbytes for t in outputs)


def _node_flops(
    node: onnx.NodeProto, inputs: list[_Tensor | None], outputs: list[_Tensor]
) -> float | None:
    op = node.op_type
    if not outputs:
        return 0.0
    out = outputs[0]
    if op == "Conv":
        return _conv_flops(inputs, out)
    if op == "ConvTranspose":
        return _conv_transpose_flops(node, inputs, out)
    if op == "MatMul":
        return _matmul_flops(inputs, out)
    if op == "Gemm":
        return _gemm_flops(node, inputs, out)
    if op in PER_ELEMENT_FLOPS:
        return PER_ELEMENT_FLOPS[op] * out.elements
    if op in PER_INPUT_ELEMENT_FLOPS:
        first = inputs[0] if inputs else None
        return None if first is None else PER_INPUT_ELEMENT_FLOPS[op] * first.elements
    if op in WINDOW_POOL_OPS:
        kernel = _int_list_attr(node, "kernel_shape")
        return math.prod(kernel) * out.elements if kernel else None
    return 0.0


def _conv_flops(inputs: list[_Tensor | None], out: _Tensor) -> float | None:
    if len(inputs) < 2 or inputs[1] is None or len(out.shape) < 2:
        return None
    weight = inputs[1].shape  # (Cout, Cin / groups, *kernel)
    per_output = 2 * weight[1] * math.prod(weight[2:])
    bias = 1 if len(inputs) > 2 and inputs[2] is not None else 0
    return (per_output + bias) * out.elements


def _conv_transpose_flops(
    node: onnx.NodeProto, inputs: list[_Tensor | None], out: _Tensor
) -> float | None:
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return None
    weight = inputs[1].shape  # (Cin, Cout / groups, *kernel)
    flops = 2 * inputs[0].elements * weight[1] * math.prod(weight[2:])
    if len(inputs) > 2 and inputs[2] is not None:
        flops += out.elements
    return flops


def _matmul_flops(inputs: list[_Tensor | None], out: _Tensor) -> float | None:
    if not inputs or inputs[0] is None or not inputs[0].shape:
        return None
    k = inputs[0].shape[-1]  # A is (..., M, K) or (K,)
    return 2 * out.elements * k


def _gemm_flops(node: onnx.NodeProto, inputs: list[_Tensor | None], out: _Tensor) -> float | None:
    if not inputs or inputs[0] is None or len(inputs[0].shape) != 2:
        return None
    trans_a = _int_attr(node, "transA", 0)
    k = inputs[0].shape[0] if trans_a else inputs[0].shape[1]
    bias = out.elements if len(inputs) > 2 and inputs[2] is not None else 0
    return 2 * out.elements * k + bias


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _int_list_attr(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return [int(v) for v in attr.ints]
    return []
