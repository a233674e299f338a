"""Any model predlat can name, as a torch module: what the torch device loads.

`torch_module_for(spec)` is the one entry point. Its module is in eval mode, float32, on
the CPU (the device moves it); forward takes the spec's inputs positionally, in
`spec.inputs` order, and returns a tuple of tensors in `spec.outputs` order. ONNX files
(zoo or a user's) go through predlat's lowering, `.pt2` files through `torch.export`,
full-size names through `torch_zoo`.

No forward pass reads a device value back to the host (`torch_host_reads` checks it), so
each can be captured in a CUDA graph. Capture after one warm-up call per input shape: the
first call of a shape may copy host-computed constants (for instance a batch-shaped mask
an exporter built from `Shape`) to the device; later calls copy nothing.
"""

from __future__ import annotations

import torch

from predlat.errors import ModelLoadError
from predlat.models import torch_zoo
from predlat.models.pt2 import pt2_module
from predlat.models.spec import ONNX, PT2, TORCH, ModelSpec
from predlat.models.torch_lowering import lower_onnx


class Tupled(torch.nn.Module):
    """A single-output model whose forward returns a 1-tuple."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model(*inputs),)


class RobertaPooled(Tupled):
    """Token ids and a mask (nonzero = attend, as in the zoo's roberta) -> the pooled
    output of the first token."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ids, mask = inputs
        return (self.model(input_ids=ids, attention_mask=(mask != 0).long()).pooler_output,)


def torch_module_for(spec: ModelSpec) -> torch.nn.Module:
    """The model of `spec` as an eval-mode float32 torch module on the CPU."""
    if spec.format == TORCH:
        return torch_zoo.build(spec.name)
    if spec.path is None:
        raise ModelLoadError(spec.name, "the spec names no file")
    if spec.format == PT2:
        return pt2_module(spec.path)
    if spec.format == ONNX:
        return lower_onnx(spec.path)
    raise ModelLoadError(spec.path, f"unknown model format '{spec.format}'")


def example_inputs(spec: ModelSpec, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the spec's shapes and dtypes, in forward order."""
    import numpy as np

    feeds = spec.random_inputs(batch_size, np.random.default_rng(seed))
    return tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
