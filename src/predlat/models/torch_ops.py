"""ONNX ops as torch functions: the registry the lowering reads, and the tensor, shape and
elementwise ops (the network layers live in `torch_ops_nn`).

An op function gets the node and its inputs in ONNX order. Positions listed as `static`
(shapes, axes, split sizes, pads) arrive as numpy arrays, known on the host; every other
input arrives as a torch tensor. Op functions turn static inputs into Python ints and may
read a tensor's `.shape`, but never its values: that keeps every forward pass free of
device-to-host reads. `None` stands for an omitted optional input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper


@dataclass(frozen=True)
class Node:
    """One ONNX node, with decoded attributes and the opset it was written against."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(hash=False)
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @staticmethod
    def of(proto: onnx.NodeProto, opset: int) -> Node:
        attrs = {a.name: _attr_value(a) for a in proto.attribute}
        return Node(
            proto.op_type,
            proto.name or (proto.output[0] if proto.output else proto.op_type),
            tuple(proto.input),
            tuple(proto.output),
            attrs,
            opset,
        )


def _attr_value(attr: onnx.AttributeProto) -> Any:
    if attr.type == onnx.AttributeProto.TENSOR:
        return onnx.numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


OpFn = Callable[[Node, list[Any]], Any]


@dataclass(frozen=True)
class OpDef:
    fn: OpFn
    static: frozenset[int]  # inputs read as host values
    shape_only: frozenset[int]  # inputs whose shape, never values, is read (Shape, Size)


OPS: dict[str, OpDef] = {}


def op(*names: str, static: Sequence[int] = (), shape_only: Sequence[int] = ()) -> Any:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = OpDef(fn, frozenset(static), frozenset(shape_only))
        return fn

    return register


# -- helpers ---------------------------------------------------------------------------
_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    if onnx_type not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type)
        raise NotImplementedError(f"element type {name}")
    return _DTYPES[onnx_type]


def ints(value: Any) -> list[int]:
    """A static input or attribute as Python ints."""
    return [int(v) for v in np.asarray(value).reshape(-1)]


def axes_of(node: Node, args: list[Any], position: int) -> list[int] | None:
    """Axes given as an input (newer opsets) or an attribute (older ones)."""
    if len(args) > position and args[position] is not None:
        return ints(args[position])
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# -- elementwise -----------------------------------------------------------------------
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Identity": lambda x: x,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Not": torch.logical_not,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "HardSwish": F.hardswish,
    "Mish": F.mish,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = OpDef(lambda node, args, f=_fn: f(args[0]), frozenset(), frozenset())


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": lambda a, b: torch.pow(a, b).to(a.dtype),
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
for _name, _bin in _BINARY.items():
    OPS[_name] = OpDef(lambda node, args, f=_bin: f(args[0], args[1]), frozenset(), frozenset())


@op("Mod")
def _mod(node: Node, args: list[Any]) -> torch.Tensor:
    fmod = node.attr("fmod", 0)
    return torch.fmod(args[0], args[1]) if fmod else torch.remainder(args[0], args[1])


@op("Max", "Min", "Sum", "Mean")
def _variadic(node: Node, args: list[Any]) -> torch.Tensor:
    combine = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}
    out = args[0]
    for other in args[1:]:
        out = combine[node.op_type](out, other)
    return out / len(args) if node.op_type == "Mean" else out


@op("Where")
def _where(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.where(args[0], args[1], args[2])


@op("Gelu")
def _gelu(node: Node, args: list[Any]) -> torch.Tensor:
    return F.gelu(args[0], approximate=node.attr("approximate", "none"))


@op("LeakyRelu")
def _leaky_relu(node: Node, args: list[Any]) -> torch.Tensor:
    return F.leaky_relu(args[0], node.attr("alpha", 0.01))


@op("Elu")
def _elu(node: Node, args: list[Any]) -> torch.Tensor:
    return F.elu(args[0], node.attr("alpha", 1.0))


@op("HardSigmoid")
def _hard_sigmoid(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.clamp(node.attr("alpha", 0.2) * args[0] + node.attr("beta", 0.5), 0.0, 1.0)


@op("PRelu")
def _prelu(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.where(args[0] < 0, args[0] * args[1], args[0])


@op("Clip")
def _clip(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    low = args[1] if len(args) > 1 else node.attr("min")
    high = args[2] if len(args) > 2 else node.attr("max")
    if low is not None:
        x = torch.maximum(x, low) if isinstance(low, torch.Tensor) else x.clamp(min=low)
    if high is not None:
        x = torch.minimum(x, high) if isinstance(high, torch.Tensor) else x.clamp(max=high)
    return x


@op("Cast")
def _cast(node: Node, args: list[Any]) -> torch.Tensor:
    return args[0].to(torch_dtype(node.attr("to")))


@op("CastLike")
def _cast_like(node: Node, args: list[Any]) -> torch.Tensor:
    return args[0].to(args[1].dtype)


@op("Dropout")
def _dropout(node: Node, args: list[Any]) -> list[torch.Tensor]:
    return [args[0], torch.ones_like(args[0], dtype=torch.bool)]  # inference: identity


# -- constants and shapes (host values) --------------------------------------------------
@op("Constant")
def _constant(node: Node, args: list[Any]) -> np.ndarray:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in node.attrs:
            dtype = np.int64 if "int" in key else np.float32
            return np.array(node.attrs[key], dtype=None if key == "value" else dtype)
    raise NotImplementedError(f"Constant with attributes {sorted(node.attrs)}")


@op("Shape", shape_only=(0,))
def _shape(node: Node, args: list[Any]) -> np.ndarray:
    dims = list(args[0].shape)
    start, end = node.attr("start", 0), node.attr("end", len(dims))
    return np.array(dims[start:end], dtype=np.int64)


@op("Size", shape_only=(0,))
def _size(node: Node, args: list[Any]) -> np.ndarray:
    return np.array(math.prod(args[0].shape), dtype=np.int64)


@op("ConstantOfShape", static=(0,))
def _constant_of_shape(node: Node, args: list[Any]) -> np.ndarray:
    value = node.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(ints(args[0]), fill[0], dtype=fill.dtype)


@op("Range", static=(0, 1, 2))
def _range(node: Node, args: list[Any]) -> np.ndarray:
    start, limit, delta = (np.asarray(a).reshape(()) for a in args)
    return np.arange(start, limit, delta, dtype=np.asarray(args[0]).dtype)


# -- layout ------------------------------------------------------------------------------
@op("Reshape", static=(1,))
def _reshape(node: Node, args: list[Any]) -> torch.Tensor:
    x, shape = args[0], ints(args[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def _transpose(node: Node, args: list[Any]) -> torch.Tensor:
    perm = node.attr("perm") or list(range(args[0].dim() - 1, -1, -1))
    return args[0].permute(*perm)


@op("Flatten")
def _flatten(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    axis = norm_axis(node.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Unsqueeze", static=(1,))
def _unsqueeze(node: Node, args: list[Any]) -> torch.Tensor:
    x, axes = args[0], axes_of(node, args, 1) or []
    rank = x.dim() + len(axes)
    for axis in sorted(norm_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@op("Squeeze", static=(1,))
def _squeeze(node: Node, args: list[Any]) -> torch.Tensor:
    x, axes = args[0], axes_of(node, args, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    keep = [d for i, d in enumerate(x.shape) if i not in {norm_axis(a, x.dim()) for a in axes}]
    return x.reshape(keep)


@op("Expand", static=(1,))
def _expand(node: Node, args: list[Any]) -> torch.Tensor:
    shape = np.broadcast_shapes(tuple(args[0].shape), tuple(ints(args[1])))
    return torch.broadcast_to(args[0], shape)


@op("Tile", static=(1,))
def _tile(node: Node, args: list[Any]) -> torch.Tensor:
    return args[0].repeat(*ints(args[1]))


@op("Concat")
def _concat(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.cat([a for a in args if a is not None], dim=node.attr("axis"))


@op("Split", static=(1,))
def _split(node: Node, args: list[Any]) -> list[torch.Tensor]:
    x, axis = args[0], node.attr("axis", 0)
    sizes = ints(args[1]) if len(args) > 1 and args[1] is not None else node.attr("split")
    if not sizes:  # equal parts; the last may be smaller (opset 18)
        parts = node.attr("num_outputs") or len(node.outputs)
        sizes = math.ceil(x.shape[axis] / parts)
    return list(torch.split(x, sizes, dim=axis))


@op("Slice", static=(1, 2, 3, 4))
def _slice(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = ints(args[1]), ints(args[2])
        axes = axes_of(node, args, 3)
        steps = ints(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = norm_axis(axis, x.dim())
        dim = x.shape[axis]
        lo, hi, stride = slice(start, end, step).indices(dim)
        if stride < 0:  # torch slices forward only: flip, then slice the mirror image
            x, lo, hi, stride = x.flip(axis), dim - 1 - lo, dim - 1 - hi, -stride
        x = x.narrow(axis, lo, 0) if hi <= lo else _strided(x, axis, lo, hi, stride)
    return x


def _strided(x: torch.Tensor, axis: int, lo: int, hi: int, step: int) -> torch.Tensor:
    index: list[slice] = [slice(None)] * x.dim()
    index[axis] = slice(lo, hi, step)
    return x[tuple(index)]
