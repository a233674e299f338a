"""A local Ray instance that stays on loopback.

Ray binds even a one-node instance to the machine's network address, so its processes
would talk over that interface. A local instance (tests, benchmarks, `predlat serve
--ray` without `--address`) needs nothing beyond this machine; Ray's own switch for
one-machine use makes it bind to 127.0.0.1. Ray reads it when it is imported, so call
`use_loopback()` before `import ray`. This module does not import Ray.
"""

from __future__ import annotations

import os

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # 0: node address 127.0.0.1


def use_loopback() -> None:
    os.environ.update(LOOPBACK_ENV)
