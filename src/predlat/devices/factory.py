"""One way to get a device from a name: `make_device("torch-cuda", slots=2)`.

A backend is a module with a `make(slots, threads, variant, **opts) -> Device` function,
named here by "module:function" so it is imported only when asked for: importing this
module imports neither ONNX Runtime nor torch. Adding a backend is one new file plus one
line in `BACKENDS`.

Names are `backend` or `backend-variant` (e.g. `onnxruntime-cuda`, `torch-cpu`); what a
variant means is up to the backend. An ONNX Runtime provider name
(`CUDAExecutionProvider`) is accepted too, for the deprecated `--provider` option.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from predlat.devices.base import Device, DeviceInfo
from predlat.errors import ConfigError

DEFAULT_DEVICE = "onnxruntime"

BACKENDS: dict[str, str] = {
    "onnxruntime": "predlat.devices.onnxruntime_device:make",
    "torch": "predlat.devices.torch_device:make",
    "simulated": "predlat.devices.simulated:make",
}
ALIASES: dict[str, str] = {"ort": "onnxruntime", "sim": "simulated"}
_PROVIDER_SUFFIX = "ExecutionProvider"


def make_device(name: str, slots: int = 1, threads: int = 1, **opts: Any) -> Device:
    """A device called `name` with `slots` slots of `threads` threads each; `opts` are
    the backend's own options (e.g. `provider=` for onnxruntime, `module_loader=` for
    torch, `cost=` for simulated)."""
    if slots < 1:
        raise ConfigError(f"slots must be at least 1, got {slots}")
    if threads < 1:
        raise ConfigError(f"threads per slot must be at least 1, got {threads}")
    backend, variant, opts = _parse(name, opts)
    module_name, _, function = BACKENDS[backend].partition(":")
    make = getattr(importlib.import_module(module_name), function)
    return make(slots, threads, variant, **opts)


def describe_device(name: str, threads: int = 1, **opts: Any) -> DeviceInfo:
    """What `make_device(name, slots=1, threads=threads)` would be (built and closed).
    A named device's description does not change within a process, and building one
    starts slot threads (on a GPU, a CUDA context): without options it is built once and
    remembered, however many runs ask."""
    if opts:
        return _build_and_describe(name, threads, **opts)
    return _described(name, threads)


@functools.cache
def _described(name: str, threads: int) -> DeviceInfo:
    return _build_and_describe(name, threads)


def _build_and_describe(name: str, threads: int, **opts: Any) -> DeviceInfo:
    device = make_device(name, 1, threads, **opts)
    try:
        return device.describe()
    finally:
        device.close()


def device_names() -> list[str]:
    """The names `make_device` knows (backends and aliases; variants come after a dash)."""
    return sorted([*BACKENDS, *ALIASES])


def _parse(name: str, opts: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    text = name.strip()
    if text.endswith(_PROVIDER_SUFFIX):  # the provider string the old --provider took
        return "onnxruntime", None, {"provider": text, **opts}
    base, _, variant = text.lower().partition("-")
    base = ALIASES.get(base, base)
    if base not in BACKENDS:
        raise ConfigError(
            f"unknown device '{name}' (known: {', '.join(device_names())}; "
            "a variant follows a dash, e.g. torch-cuda, onnxruntime-cuda)"
        )
    return base, variant or None, opts
