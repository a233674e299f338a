"""A small toolkit for building ONNX graphs in code (the zoo's building blocks).

`GraphBuilder` accumulates nodes and seeded random initializers; every op method takes
tensor names and returns the name of its output. Shapes are never written with a
concrete batch size: reshapes copy the batch axis with 0, so one graph serves any batch.
Weights are drawn with He / Xavier scaling so activations stay finite through deep stacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # first opset with LayerNormalization
IR_VERSION = 8  # the IR of opset 17: loadable by older ONNX Runtime releases too
BATCH_DIM = "batch"


@dataclass
class GraphBuilder:
    """Accumulates a graph; `seed` fixes every weight, so builds are byte-identical."""

    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)
    nodes: list[onnx.NodeProto] = field(default_factory=list, repr=False)
    initializers: list[onnx.TensorProto] = field(default_factory=list, repr=False)
    inputs: dict[str, onnx.ValueInfoProto] = field(default_factory=dict, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    # -- names, inputs, weights -----------------------------------------------------
    def fresh(self, prefix: str) -> str:
        count = self._counts.get(prefix, 0)
        self._counts[prefix] = count + 1
        return f"{prefix}_{count}"

    def input(self, name: str, dims: Sequence[int], dtype: int = TensorProto.FLOAT) -> str:
        """A graph input of shape [batch, *dims]; the batch axis is symbolic."""
        self.inputs[name] = helper.make_tensor_value_info(name, dtype, [BATCH_DIM, *dims])
        return name

    def const(self, values: np.ndarray | Sequence[float], dtype: type = np.float32) -> str:
        name = self.fresh("c")
        array = np.asarray(values, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def param(self, shape: Sequence[int], std: float) -> str:
        """A seeded random weight N(0, std^2)."""
        array = (self.rng.standard_normal(tuple(shape), dtype=np.float32) * std).astype(np.float32)
        name = self.fresh("w")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: object
    ) -> str:
        """One single-output node; returns its output name (fresh unless `out` is given)."""
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def named(self, x: str, name: str) -> str:
        """`x` under a readable name (for graph outputs)."""
        return self.op("Identity", [x], out=name)

    # -- elementwise -----------------------------------------------------------------
    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def scale(self, x: str, factor: float) -> str:
        return self.mul(x, self.const(factor))

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def sigmoid(self, x: str) -> str:
        return self.op("Sigmoid", [x])

    def tanh(self, x: str) -> str:
        return self.op("Tanh", [x])

    def silu(self, x: str) -> str:
        return self.mul(x, self.sigmoid(x))

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)): the form exporters write."""
        erf = self.op("Erf", [self.scale(x, 1.0 / math.sqrt(2.0))])
        return self.mul(self.scale(x, 0.5), self.add(erf, self.const(1.0)))

    # -- shape ops -------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """0 copies the input's axis (use it for the batch axis), -1 is inferred."""
        return self.op("Reshape", [x, self.const(shape, np.int64)])

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", [x], perm=list(perm))

    def flatten(self, x: str) -> str:
        return self.op("Flatten", [x], axis=1)

    def concat(self, xs: Sequence[str], axis: int) -> str:
        return self.op("Concat", list(xs), axis=axis)

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        outs = [self.fresh("split") for _ in sizes]
        node = helper.make_node(
            "Split", [x, self.const(sizes, np.int64)], outs, name=outs[0], axis=axis
        )
        self.nodes.append(node)
        return outs

    def take(self, x: str, index: int, axis: int) -> str:
        """x[..., index, ...] along `axis`, dropping that axis."""
        return self.op("Gather", [x, self.const(index, np.int64)], axis=axis)

    # -- convolutions and pooling (NCHW) --------------------------------------------
    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = True,
        gain: float = 2.0,
    ) -> str:
        """Conv with He-scaled weights (gain 2 suits a following ReLU); `pad`
        defaults to 'same' for odd kernels."""
        pad = kernel // 2 if pad is None else pad
        fan_in = (c_in // groups) * kernel * kernel
        w = self.param((c_out, c_in // groups, kernel, kernel), math.sqrt(gain / fan_in))
        ins = [x, w, self.const(np.zeros(c_out))] if bias else [x, w]
        return self.op(
            "Conv",
            ins,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )

    def maxpool(self, x: str, kernel: int, stride: int, pad: int = 0) -> str:
        return self.op(
            "MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4
        )

    def global_avg_pool(self, x: str) -> str:
        return self.op("GlobalAveragePool", [x])

    def upsample(self, x: str, factor: int = 2) -> str:
        """Nearest-neighbour upsampling of the two spatial axes."""
        scales = self.const([1.0, 1.0, float(factor), float(factor)])
        return self.op("Resize", [x, "", scales], mode="nearest")

    # -- dense layers ----------------------------------------------------------------
    def matmul(self, x: str, d_in: int, d_out: int, gain: float = 1.0) -> str:
        """x @ W over the last axis (any leading axes), Xavier-like scaling."""
        return self.op("MatMul", [x, self.param((d_in, d_out), math.sqrt(gain / d_in))])

    def linear(self, x: str, d_in: int, d_out: int, gain: float = 1.0) -> str:
        return self.add(self.matmul(x, d_in, d_out, gain), self.const(np.zeros(d_out)))

    def layer_norm(self, x: str, dim: int, axis: int = -1, eps: float = 1e-5) -> str:
        gamma, beta = self.const(np.ones(dim)), self.const(np.zeros(dim))
        return self.op("LayerNormalization", [x, gamma, beta], axis=axis, epsilon=eps)

    def softmax(self, x: str, axis: int = -1) -> str:
        return self.op("Softmax", [x], axis=axis)

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = False) -> str:
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=int(keepdims))

    def embedding(self, ids: str, vocab: int, dim: int, std: float = 0.02) -> str:
        """Token table lookup: a Gather that reads rows of a (vocab, dim) weight."""
        return self.op("Gather", [self.param((vocab, dim), std), ids], axis=0)

    # -- transformer blocks ([batch, seq, dim]) -------------------------------------
    def additive_mask(self, mask: str) -> str:
        """An integer [batch, seq] mask (nonzero = attend) as [batch, 1, 1, seq] logits
        offsets: 0 where attended, -1e4 where masked (finite, so all-masked rows stay
        finite too)."""
        keep = self.op("Cast", [self.op("Cast", [mask], to=TensorProto.BOOL)], to=TensorProto.FLOAT)
        offset = self.scale(self.op("Sub", [self.const(1.0), keep]), -1e4)
        return self.op("Unsqueeze", [offset, self.const([1, 2], np.int64)])

    def attention(self, x: str, dim: int, heads: int, mask: str | None = None) -> str:
        """Multi-head self-attention; `mask` is an additive_mask() output."""
        head_dim = dim // heads

        def project(transpose: Sequence[int]) -> str:
            y = self.reshape(self.linear(x, dim, dim), [0, -1, heads, head_dim])
            return self.transpose(y, transpose)

        q = project([0, 2, 1, 3])  # [B, H, S, Dh]
        k = project([0, 2, 3, 1])  # [B, H, Dh, S]
        v = project([0, 2, 1, 3])
        scores = self.op("MatMul", [self.scale(q, 1.0 / math.sqrt(head_dim)), k])
        if mask is not None:
            scores = self.add(scores, mask)
        context = self.op("MatMul", [self.softmax(scores, -1), v])  # [B, H, S, Dh]
        merged = self.reshape(self.transpose(context, [0, 2, 1, 3]), [0, -1, dim])
        return self.linear(merged, dim, dim)

    def mlp(self, x: str, dim: int, hidden: int) -> str:
        return self.linear(self.gelu(self.linear(x, dim, hidden, gain=2.0)), hidden, dim)

    def encoder_layer(
        self,
        x: str,
        dim: int,
        heads: int,
        hidden: int,
        mask: str | None = None,
        pre_norm: bool = True,
    ) -> str:
        """A transformer encoder layer: pre-norm (ViT) or post-norm (BERT/RoBERTa)."""
        if pre_norm:
            x = self.add(x, self.attention(self.layer_norm(x, dim), dim, heads, mask))
            return self.add(x, self.mlp(self.layer_norm(x, dim), dim, hidden))
        x = self.layer_norm(self.add(x, self.attention(x, dim, heads, mask)), dim)
        return self.layer_norm(self.add(x, self.mlp(x, dim, hidden)), dim)

    # -- the model -------------------------------------------------------------------
    def build(self, name: str, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
        """The finished, checked model; outputs get their inferred types and shapes."""
        graph = helper.make_graph(
            self.nodes,
            name,
            [self.inputs[i] for i in inputs],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="predlat",
        )
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {vi.name: vi for vi in inferred.graph.value_info}
        del model.graph.output[:]
        for out in outputs:
            info = known[out]
            dims = info.type.tensor_type.shape.dim
            if not dims or dims[0].HasField("dim_value"):
                raise ValueError(f"output '{out}' of {name} has no dynamic batch axis")
            dims[0].dim_param = BATCH_DIM  # inference loses the name through Resize
            model.graph.output.append(info)
        onnx.checker.check_model(model, full_check=True)
        return model
