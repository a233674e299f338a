"""predlat: ML inference serving with predictable latency under co-location."""

__version__ = "0.1.0"
