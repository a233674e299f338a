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
    """Counts device-to-host reads of the ops run under it (`reads` names each one), and
    host-to-device copies (`uploads`): a captured CUDA graph cannot contain those either,
    so after one warm-up call per shape a forward pass should make none."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.uploads: list[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func in _SCALAR_READS and source is not None and source.device.type != "cpu":
            self.reads.append(f"{func} of a {tuple(source.shape)} {source.dtype} tensor")
            if source.device.type == "meta":
                return False if source.dtype == torch.bool else 0
        elif func in _COPIES:
            src, dst = _copy_ends(func, args, kwargs)
            if src != "cpu" and dst == "cpu":
                shape = tuple(args[1 if func is _aten.copy_.default else 0].shape)
                self.reads.append(f"{func} to the CPU of a {shape} tensor")
                if src == "meta":  # no data to copy: answer zeros
                    return args[0] if func is _aten.copy_.default else _zeros(args[0], kwargs)
            elif src == "cpu" and dst not in ("cpu", None):
                self.uploads.append(f"{func} of a {tuple(args[-1].shape)} tensor to {dst}")
        return func(*args, **kwargs)


def _copy_ends(func: Any, args: Sequence[Any], kwargs: dict) -> tuple[str, str | None]:
    """Device types a copy goes from and to (None: it stays where it is)."""
    if func is _aten._to_copy.default:
        target = kwargs.get("device")
        return args[0].device.type, None if target is None else target.type
    return args[1].device.type, args[0].device.type


def _zeros(src: torch.Tensor, kwargs: dict) -> torch.Tensor:
    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)


def host_traffic(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], on_meta: bool = True
) -> HostReadCounter:
    """One forward pass of `module`, counting its reads and uploads."""
    counter = HostReadCounter()
    if on_meta:  # weights swapped for meta tensors without copying them
        state = {
            name: tensor.to("meta")
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        }
        args = tuple(x.to("meta") for x in inputs)
        run = lambda: torch.func.functional_call(module, state, args)  # noqa: E731
    else:
        run = lambda: module(*inputs)  # noqa: E731
    try:
        with torch.no_grad(), counter:
            run()
    except TypeError as exc:  # .numpy() of a device tensor fails before dispatch
        if "numpy" not in str(exc):
            raise
        counter.reads.append(f"numpy() of a device tensor ({exc})")
    return counter


def count_host_reads(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], on_meta: bool = True
) -> list[str]:
    """The host reads one forward pass of `module` makes (empty means none)."""
    return host_traffic(module, inputs, on_meta).reads


def count_uploads_after_warm_up(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], on_meta: bool = True
) -> list[str]:
    """The host-to-device copies of a second forward pass with the same input shapes."""
    host_traffic(module, inputs, on_meta)
    return host_traffic(module, inputs, on_meta).uploads
