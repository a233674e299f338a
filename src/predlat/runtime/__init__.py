"""Drives a real device with a scheduler on the wall clock."""

from predlat.runtime.build import best_serial_threads, build_runtime
from predlat.runtime.runtime import InvalidInputError, RequestOutcome, Runtime, RuntimeStats

__all__ = [
    "InvalidInputError",
    "RequestOutcome",
    "Runtime",
    "RuntimeStats",
    "best_serial_threads",
    "build_runtime",
]
