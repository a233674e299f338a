"""Static cost of torch modules: FLOPs from torch's counter, bytes per dispatched op."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from predlat.models.spec import ModelSpec, TensorSpec  # noqa: E402
from predlat.profiling.torch_cost import torch_cost, torch_costs  # noqa: E402


def _spec() -> ModelSpec:
    return ModelSpec(
        name="mlp",
        path=Path("mlp"),
        inputs=(TensorSpec("x", np.dtype(np.float32), (None, 16)),),
        outputs=(TensorSpec("y", np.dtype(np.float32), (None, 32)),),
        digest="0",
    )


def test_linear_flops_and_bytes_are_exact():
    torch.manual_seed(0)
    module = torch.nn.Linear(16, 32)
    cost = torch_cost(module, _spec(), 4)
    assert cost.flops == 2 * 4 * 16 * 32  # one multiply-add per weight per row
    # addmm reads bias (32), input (4x16), weight (16x32) and writes 4x32, all float32.
    assert cost.bytes >= 4 * (32 + 4 * 16 + 16 * 32 + 4 * 32)
    assert cost.arith_intensity > 0


def test_costs_grow_with_batch_and_leave_the_module_untouched():
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
    before = module[0].weight.detach().clone()
    costs = torch_costs(module, _spec(), [1, 8])
    assert costs[8].flops == 8 * costs[1].flops
    assert costs[8].bytes > costs[1].bytes
    assert module[0].weight.device.type == "cpu"
    assert torch.equal(module[0].weight, before)
