"""Devices execute batches on slots; they never decide what to run."""

from predlat.devices.base import BatchJob, BatchResult, Device, SlotBusyError
from predlat.devices.onnxruntime_device import OrtDevice, OrtDeviceConfig

__all__ = ["BatchJob", "BatchResult", "Device", "OrtDevice", "OrtDeviceConfig", "SlotBusyError"]
