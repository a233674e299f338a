"""Compiled inner loops: numba where it is installed, the same source as Python elsewhere.

The fine forecast and the RLS update run on every scheduling decision and every finished
batch, on a handful of numbers each; in Python their interpreter overhead is most of a
decision's cost. numba compiles them to machine code (cached on disk, so a process pays
for compilation once per machine, not per run). Where numba cannot be installed, the
very same functions run as plain Python, on lists: slower, same results.

Kernels allocate their outputs with `floats` / `table`, so that the pure-Python run
works on lists (fast in the interpreter) and the compiled one on arrays; the callers
hand them arrays or lists to match (`COMPILED`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

try:  # (PREDLAT_NO_JIT=1 runs the plain-Python path, for tests and comparisons)
    if os.environ.get("PREDLAT_NO_JIT", "") not in ("", "0"):
        raise ImportError("PREDLAT_NO_JIT is set")
    import numba
except ImportError:
    numba = None

COMPILED = numba is not None


def kernel(fn: F) -> F:
    """`fn` compiled (nopython, IEEE arithmetic: no fastmath, so results match the
    interpreter's), or `fn` itself without numba."""
    if numba is None:
        return fn
    return numba.njit(cache=True, nogil=True)(fn)


if numba is not None:

    @kernel
    def floats(n: int) -> Any:
        """n zeros (an array when compiled, a list in Python)."""
        return np.zeros(n)

    @kernel
    def table(n: int, m: int) -> Any:
        """n rows of m zeros."""
        return np.zeros((n, m))

else:

    def floats(n: int) -> Any:
        return [0.0] * n

    def table(n: int, m: int) -> Any:
        return [[0.0] * m for _ in range(n)]


def as_list(values: Any) -> list[float]:
    """A kernel's 1-D result as a list of Python floats."""
    return values if isinstance(values, list) else values.tolist()
