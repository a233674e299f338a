"""A user's `torch.export` program (`.pt2`, PyTorch's deployment format) as a model.

The signature is read from the exported graph: user inputs are its placeholders, whose
example values carry symbolic sizes where the program was exported with a dynamic
dimension. predlat batches along the first axis, so that axis must be symbolic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from predlat.errors import ModelLoadError
from predlat.models.spec import PT2, ModelSpec, TensorSpec, batch_dims


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            "(.pt2)", "reading a .pt2 file needs torch: pip install torch"
        ) from None
    return torch


def load_program(path: Path) -> Any:
    """The ExportedProgram saved at `path`, or a ModelLoadError saying why not."""
    torch = _torch()
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(path, f"not a torch.export program ({reason[:200]})") from None


def _numpy_dtype(torch: Any, dtype: Any, path: Path, what: str) -> np.dtype:
    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except TypeError:
        raise ModelLoadError(path, f"{what} has unsupported type {dtype}") from None


def _tensor_spec(torch: Any, name: str, value: Any, path: Path, is_input: bool) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(path, f"{name} is not a tensor ({type(value).__name__})")
    dims = batch_dims(
        [d if isinstance(d, int) else None for d in value.shape],
        name,
        path,
        is_input,
        fix=f": export with dynamic_shapes={{{name!r}: {{0: torch.export.Dim('batch')}}}}",
    )
    return TensorSpec(name, _numpy_dtype(torch, value.dtype, path, name), dims)


def pt2_spec(path: Path, name: str | None = None) -> ModelSpec:
    torch = _torch()
    program = load_program(path)
    nodes = {n.name: n for n in program.graph.nodes}
    signature = program.graph_signature
    if not signature.user_inputs:
        raise ModelLoadError(path, "the program has no inputs")
    inputs = tuple(
        _tensor_spec(torch, n, nodes[n].meta.get("val"), path, is_input=True)
        for n in signature.user_inputs
    )
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [a.meta.get("val") if hasattr(a, "meta") else a for a in out_node.args[0]]
    outputs = tuple(
        _tensor_spec(torch, f"output_{i}", v, path, is_input=False) for i, v in enumerate(values)
    )
    return ModelSpec.of_file(path, inputs, outputs, name, format=PT2)


def pt2_module(path: Path) -> Any:
    """The program as a module whose forward returns a flat tuple of tensors."""
    torch = _torch()
    from torch.utils._pytree import tree_leaves

    class FlatOutputs(torch.nn.Module):
        """An exported program's module with its outputs flattened to a tuple. Exported
        modules refuse `.train()` / `.eval()` (they run as they were exported), so this
        wrapper records the mode without passing it down."""

        def __init__(self, program: Any) -> None:
            super().__init__()
            self.program = program

        def train(self, mode: bool = True) -> FlatOutputs:
            self.training = mode
            return self

        def forward(self, *inputs: Any) -> tuple[Any, ...]:
            return tuple(tree_leaves(self.program(*inputs)))

    return FlatOutputs(load_program(path).module()).eval()
