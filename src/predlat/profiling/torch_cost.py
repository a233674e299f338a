"""Static cost (FLOPs and bytes) of a torch module's forward pass, per batch size.

The ONNX graph walk (`graph_cost`) cannot see models that exist only as torch code or
`torch.export` programs, so for those the profiler counts what the forward pass
dispatches instead: FLOPs through torch's own `FlopCounterMode` (matmuls, convolutions,
attention), and bytes as the sum of every ATen op's input and output tensor sizes, the
same upper bound (caches ignored) that `graph_cost` gives per ONNX node. The pass runs
on meta tensors, so nothing is computed and a full-size model costs milliseconds; a
module that cannot run on meta is counted on the CPU instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from predlat.models.spec import ModelSpec
from predlat.profiling.graph_cost import GraphCost

# Views and metadata ops move no data (mirrors graph_cost's free ONNX ops).
_FREE_OPS = frozenset(
    ("view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "squeeze",
     "unsqueeze", "slice", "select", "alias", "detach", "as_strided", "split", "unbind",
     "_reshape_alias", "empty", "empty_like", "lift_fresh", "sym_size", "sym_numel")
)  # fmt: skip


class _BytesCounter(TorchDispatchMode):
    """Sums the bytes of each op's tensor inputs and outputs, keyed by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.per_op: dict[str, float] = {}
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops += 1
        if name not in _FREE_OPS:
            leaves, _ = tree_flatten((args, kwargs or {}, out))
            moved = sum(t.nelement() * t.element_size() for t in leaves if torch.is_tensor(t))
            self.per_op[name] = self.per_op.get(name, 0.0) + float(moved)
        return out


def torch_cost(module: torch.nn.Module, spec: ModelSpec, batch_size: int) -> GraphCost:
    """FLOPs and bytes of one forward pass of `module` on a batch of `batch_size`."""
    try:
        return _count(copy.deepcopy(module).to("meta"), spec, batch_size, "meta")
    except Exception:  # an op without a meta kernel: count on real tensors
        return _count(copy.deepcopy(module).to("cpu"), spec, batch_size, "cpu")


def torch_costs(
    module: torch.nn.Module, spec: ModelSpec, batch_sizes: Iterable[int]
) -> dict[int, GraphCost]:
    return {n: torch_cost(module, spec, n) for n in batch_sizes}


def _count(module: torch.nn.Module, spec: ModelSpec, batch_size: int, device: str) -> GraphCost:
    inputs = _sample_inputs(spec, batch_size, device)
    flops = FlopCounterMode(display=False)
    moved = _BytesCounter()
    with torch.no_grad(), flops, moved:
        module(*inputs)
    per_op = {str(k): float(v) for k, v in flops.get_flop_counts().get("Global", {}).items()}
    return GraphCost(
        flops=float(flops.get_total_flops()),
        bytes=float(sum(moved.per_op.values())),
        per_op=per_op,
        per_op_bytes=moved.per_op,
        unknown_nodes=0,
        total_nodes=moved.ops,
    )


def _sample_inputs(spec: ModelSpec, batch_size: int, device: str) -> list[Any]:
    feeds = spec.random_inputs(batch_size, np.random.default_rng(0))
    return [torch.from_numpy(feeds[t.name]).to(device) for t in spec.inputs]
