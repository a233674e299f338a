"""Devices execute batches on slots; they never decide what to run.

Get one by name with `make_device`; the backends' modules (and so ONNX Runtime and
torch) are imported only when one of them is asked for.
"""

from __future__ import annotations

from typing import Any

from predlat.devices.base import (
    PHASES,
    BatchJob,
    BatchResult,
    Device,
    DeviceInfo,
    SlotBusyError,
)
from predlat.devices.factory import DEFAULT_DEVICE, describe_device, device_names, make_device

__all__ = [
    "DEFAULT_DEVICE",
    "PHASES",
    "BatchJob",
    "BatchResult",
    "Device",
    "DeviceInfo",
    "OrtDevice",
    "OrtDeviceConfig",
    "SlotBusyError",
    "describe_device",
    "device_names",
    "make_device",
]


def __getattr__(name: str) -> Any:
    if name in ("OrtDevice", "OrtDeviceConfig"):
        from predlat.devices import onnxruntime_device

        return getattr(onnxruntime_device, name)
    raise AttributeError(f"module 'predlat.devices' has no attribute '{name}'")
