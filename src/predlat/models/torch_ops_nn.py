"""ONNX network-layer ops as torch functions: convolution, pooling, normalisation,
matrix products, softmax, reductions, resizing, indexing and scans (conventions in
`torch_ops`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from predlat.models.torch_ops import Node, axes_of, ints, norm_axis, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial_pads(node: Node, x: torch.Tensor, kernel: list[int], strides: list[int]) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial axes, resolving auto_pad from shapes."""
    dims = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(node.attr("pads") or [0] * 2 * dims)
    if auto == "VALID":
        return [0] * 2 * dims
    dilations = node.attr("dilations") or [1] * dims
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _symmetric(pads: list[int]) -> list[int] | None:
    half = len(pads) // 2
    return pads[:half] if pads[:half] == pads[half:] else None


def _pad_explicitly(x: torch.Tensor, pads: list[int], value: float) -> torch.Tensor:
    half = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(half)):  # F.pad lists the last axis first
        torch_pads += [pads[axis], pads[axis + half]]
    return F.pad(x, torch_pads, value=value)


@op("Conv")
def _conv(node: Node, args: list[Any]) -> torch.Tensor:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    kernel = node.attr("kernel_shape") or list(w.shape[2:])
    dims = len(kernel)
    strides = node.attr("strides") or [1] * dims
    pads = _spatial_pads(node, x, kernel, strides)
    same = _symmetric(pads)
    if same is None:
        x, same = _pad_explicitly(x, pads, 0.0), [0] * dims
    return _CONV[dims](
        x, w, bias, strides, same, node.attr("dilations") or [1] * dims, node.attr("group", 1)
    )


def _pool_window(
    node: Node, x: torch.Tensor
) -> tuple[list[int], list[int], list[int], list[int] | None]:
    """A pool's kernel, strides, pads, and its symmetric pads, or None where torch cannot
    take them (asymmetric, or over half the kernel) and they must be applied first."""
    kernel = node.attr("kernel_shape")
    strides = node.attr("strides") or [1] * len(kernel)
    pads = _spatial_pads(node, x, kernel, strides)
    same = _symmetric(pads)
    if same is not None and any(2 * p > k for p, k in zip(same, kernel, strict=True)):
        same = None
    return kernel, strides, pads, same


@op("MaxPool")
def _max_pool(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    kernel, strides, pads, same = _pool_window(node, x)
    dims = len(kernel)
    if same is None:
        x, same = _pad_explicitly(x, pads, -math.inf), [0] * dims
    dilation = node.attr("dilations") or [1] * dims
    ceil = bool(node.attr("ceil_mode", 0))
    return _MAX_POOL[dims](x, kernel, strides, same, dilation, ceil_mode=ceil)


@op("AveragePool")
def _avg_pool(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    kernel, strides, pads, same = _pool_window(node, x)
    dims, include = len(kernel), bool(node.attr("count_include_pad", 0))
    if same is None:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric pads excluding the pad")
        x, same = _pad_explicitly(x, pads, 0.0), [0] * dims
    ceil = bool(node.attr("ceil_mode", 0))
    return _AVG_POOL[dims](x, kernel, strides, same, ceil_mode=ceil, count_include_pad=include)


@op("GlobalAveragePool")
def _global_avg_pool(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("BatchNormalization")
def _batch_norm(node: Node, args: list[Any]) -> torch.Tensor:
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


@op("InstanceNormalization")
def _instance_norm(node: Node, args: list[Any]) -> torch.Tensor:
    return F.instance_norm(args[0], weight=args[1], bias=args[2], eps=node.attr("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(node: Node, args: list[Any]) -> torch.Tensor:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = norm_axis(node.attr("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, node.attr("epsilon", 1e-5))
    out = F.layer_norm(x, shape, None, None, node.attr("epsilon", 1e-5)) * scale
    return out if bias is None else out + bias


@op("MatMul")
def _matmul(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.matmul(args[0], args[1])


@op("Gemm")
def _gemm(node: Node, args: list[Any]) -> torch.Tensor:
    a = args[0].t() if node.attr("transA", 0) else args[0]
    b = args[1].t() if node.attr("transB", 0) else args[1]
    out = torch.matmul(a, b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(args) > 2 and args[2] is not None:
        out = out + (args[2] if beta == 1.0 else beta * args[2])
    return out


@op("Softmax", "LogSoftmax")
def _softmax(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    # Before opset 13 the op flattened the trailing axes from `axis` into one.
    axis = norm_axis(node.attr("axis", 1), x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return fn(flat, dim=-1).reshape(x.shape)


_REDUCE = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
}


@op(*_REDUCE, "ReduceProd", "ReduceL2", "ReduceSumSquare", static=(1,))
def _reduce(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    axes = axes_of(node, args, 1)
    keep = bool(node.attr("keepdims", 1))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    dims = tuple(norm_axis(a, x.dim()) for a in axes)
    if node.op_type == "ReduceProd":
        for d in sorted(dims, reverse=True):
            x = torch.prod(x, d, keepdim=True)
        return x if keep else x.reshape([s for i, s in enumerate(x.shape) if i not in dims])
    if node.op_type == "ReduceSumSquare":
        return torch.sum(x * x, dim=dims, keepdim=keep)
    if node.op_type == "ReduceL2":
        return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
    return _REDUCE[node.op_type](x, dim=dims, keepdim=keep)


@op("ArgMax", "ArgMin")
def _arg(node: Node, args: list[Any]) -> torch.Tensor:
    x, axis = args[0], norm_axis(node.attr("axis", 0), args[0].dim())
    keep = bool(node.attr("keepdims", 1))
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if not node.attr("select_last_index", 0):
        return fn(x, dim=axis, keepdim=keep)
    return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)


@op("TopK", static=(1,))
def _topk(node: Node, args: list[Any]) -> list[torch.Tensor]:
    k = ints(args[1])[0]
    largest, ordered = bool(node.attr("largest", 1)), bool(node.attr("sorted", 1))
    values, indices = torch.topk(args[0], k, node.attr("axis", -1), largest, ordered)
    return [values, indices]


@op("Pad", static=(1, 2, 3))
def _pad(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    pads = ints(args[1]) if len(args) > 1 else list(node.attr("pads"))
    value = float(args[2].reshape(-1)[0]) if len(args) > 2 and args[2] is not None else 0.0
    axes = axes_of(node, args, 3) or list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(norm_axis(a, x.dim()) for a in axes):
        full[axis], full[axis + x.dim()] = pads[i], pads[i + len(axes)]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        return _pad_spatial(x, full, "constant", value)
    return _pad_spatial(x, full, {"reflect": "reflect", "edge": "replicate"}[mode], None)


def _pad_spatial(x: torch.Tensor, pads: list[int], mode: str, value: float | None) -> torch.Tensor:
    half = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(half)):
        torch_pads += [pads[axis], pads[axis + half]]
    if mode != "constant":  # reflect / replicate pad only the trailing (spatial) axes
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
    return F.pad(x, torch_pads, mode=mode, value=value)


@op("Resize", "Upsample", static=(1, 2, 3))
def _resize(node: Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    if node.op_type == "Upsample" or node.opset < 11:
        scales, sizes = args[1] if len(args) > 1 else node.attr("scales"), None
    else:
        scales = args[2] if len(args) > 2 and args[2] is not None and args[2].size else None
        sizes = ints(args[3]) if len(args) > 3 and args[3] is not None else None
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotImplementedError("Resize keeping the aspect ratio")
    axes = [norm_axis(a, x.dim()) for a in node.attr("axes") or range(x.dim())]
    full = list(x.shape)
    if sizes is not None:
        for axis, size in zip(axes, sizes, strict=True):
            full[axis] = size
    else:
        for axis, factor in zip(axes, (float(f) for f in scales.reshape(-1)), strict=True):
            full[axis] = math.floor(x.shape[axis] * factor)
    if full[:2] != list(x.shape[:2]):
        raise NotImplementedError("Resize of the batch or channel axis")
    out = full[2:]
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        # torch's nearest picks source floor(i / f); ONNX agrees for asymmetric + floor,
        # and for half-pixel + rounding when f is an integer (no ties arise then).
        rounding = node.attr("nearest_mode", "round_prefer_floor").startswith("round")
        integer = all(o % d == 0 for o, d in zip(out, x.shape[2:], strict=True))
        half_pixel = transform in ("half_pixel", "pytorch_half_pixel")
        floor = node.attr("nearest_mode") == "floor"
        if (transform == "asymmetric" and floor) or (half_pixel and rounding and integer):
            return F.interpolate(x, size=out, mode="nearest")
        raise NotImplementedError(f"nearest Resize by a fractional factor ({transform})")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(out)]
        corners = transform == "align_corners"
        return F.interpolate(x, size=out, mode=kind, align_corners=corners)
    raise NotImplementedError(f"Resize mode {mode} with {transform} coordinates")


# -- indexing and scans ------------------------------------------------------------------
@op("Gather")
def _gather(node: Node, args: list[Any]) -> torch.Tensor:
    x, index = args[0], args[1]
    axis = norm_axis(node.attr("axis", 0), x.dim())
    dim = x.shape[axis]
    index = torch.where(index < 0, index + dim, index)  # on the device: no host read
    picked = x.index_select(axis, index.reshape(-1).long())
    return picked.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


@op("GatherElements")
def _gather_elements(node: Node, args: list[Any]) -> torch.Tensor:
    x, index = args[0], args[1]
    axis = norm_axis(node.attr("axis", 0), x.dim())
    index = torch.where(index < 0, index + x.shape[axis], index)
    return torch.gather(x, axis, index.long())


@op("Einsum")
def _einsum(node: Node, args: list[Any]) -> torch.Tensor:
    return torch.einsum(node.attr("equation"), *args)


@op("CumSum", static=(1,))
def _cumsum(node: Node, args: list[Any]) -> torch.Tensor:
    x, axis = args[0], ints(args[1])[0]
    if node.attr("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if node.attr("exclusive", 0):
        out = out - x
    return out.flip(axis) if node.attr("reverse", 0) else out


@op("Trilu", static=(1,))
def _trilu(node: Node, args: list[Any]) -> torch.Tensor:
    k = ints(args[1])[0] if len(args) > 1 and args[1] is not None else 0
    return torch.triu(args[0], k) if node.attr("upper", 1) else torch.tril(args[0], k)
