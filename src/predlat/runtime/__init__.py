"""Drives a real device with a scheduler on the wall clock."""

from predlat.runtime.build import build_runtime, policy_threads, usable_cores
from predlat.runtime.runtime import RequestOutcome, Runtime, RuntimeStats
from predlat.runtime.tensors import InvalidInputError

__all__ = [
    "InvalidInputError",
    "RequestOutcome",
    "Runtime",
    "RuntimeStats",
    "build_runtime",
    "policy_threads",
    "usable_cores",
]
