"""Counting the device values a forward pass reads back to the host.

A CUDA graph can be captured only if the forward pass never reads a device value on the
host (`.item()`, `bool(t)`, `int(t)`, `.tolist()`, `.cpu()`, a data-dependent shape).
Every such read reaches the dispatcher as `aten._local_scalar_dense` or as a copy to the
CPU, so a dispatch mode counts them. With `on_meta` (the default) the pass runs on meta
tensors, weights included (swapped in, no copy): no arithmetic is done, so the check is
cheap for full-size models and needs no GPU, and a read whose result would steer Python
control flow is answered with a zero and counted instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_SCALAR_READS = (_aten._local_scalar_dense.default,)
_COPIES = (_aten._to_copy.default, _aten.copy_.default)


class HostReadCounter(TorchDispatchMode):
    """Counts device-to-host reads of the ops run under it; `reads` names each one."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func in _SCALAR_READS and source is not None and source.device.type != "cpu":
            self.reads.append(f"{func} of a {tuple(source.shape)} {source.dtype} tensor")
            if source.device.type == "meta":
                return False if source.dtype == torch.bool else 0
        elif func in _COPIES and _to_host(func, args, kwargs):
            src = args[1] if func is _aten.copy_.default else args[0]
            self.reads.append(f"{func} to the CPU of a {tuple(src.shape)} tensor")
            if src.device.type == "meta":  # no data to copy: answer zeros
                if func is _aten.copy_.default:
                    return args[0]
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        return func(*args, **kwargs)


def _to_host(func: Any, args: Sequence[Any], kwargs: dict) -> bool:
    """A copy from a non-CPU tensor into host memory."""
    if func is _aten._to_copy.default:
        target = kwargs.get("device")
        return args[0].device.type != "cpu" and target is not None and target.type == "cpu"
    dst, src = args[0], args[1]
    return dst.device.type == "cpu" and src.device.type != "cpu"


def count_host_reads(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], on_meta: bool = True
) -> list[str]:
    """The host reads one forward pass of `module` makes (empty means none)."""
    counter = HostReadCounter()
    if on_meta:
        state = {
            name: tensor.to("meta")
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        }
        meta_inputs = [x.to("meta") for x in inputs]
        run = lambda: torch.func.functional_call(module, state, tuple(meta_inputs))  # noqa: E731
    else:
        run = lambda: module(*inputs)  # noqa: E731
    try:
        with torch.no_grad(), counter:
            run()
    except TypeError as exc:  # .numpy() of a device tensor fails before dispatch
        if "numpy" not in str(exc):
            raise
        counter.reads.append(f"numpy() of a device tensor ({exc})")
    return counter.reads
