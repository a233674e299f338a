"""predlat: ML inference serving with predictable latency under co-location."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import predlat` stays cheap for the command line.
    if name == "LatencyModel":
        from predlat.predict.model import LatencyModel

        return LatencyModel
    raise AttributeError(f"module 'predlat' has no attribute {name!r}")
