"""Drives a real device with a scheduler on the wall clock."""

from predlat.runtime.build import best_serial_threads, build_runtime
from predlat.runtime.runtime import RequestOutcome, Runtime, RuntimeStats
from predlat.runtime.tensors import InvalidInputError

__all__ = [
    "InvalidInputError",
    "RequestOutcome",
    "Runtime",
    "RuntimeStats",
    "best_serial_threads",
    "build_runtime",
]
