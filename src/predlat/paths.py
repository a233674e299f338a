"""Where predlat keeps files it can rebuild (built zoo models, reusable profiles)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$PREDLAT_CACHE_DIR`, else `$XDG_CACHE_HOME/predlat`, else `~/.cache/predlat`."""
    explicit = os.environ.get("PREDLAT_CACHE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "predlat"
    root.mkdir(parents=True, exist_ok=True)
    return root
