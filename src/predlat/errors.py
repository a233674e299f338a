"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class PredlatError(Exception):
    """Base class of errors caused by the user's input (files, flags, configs)."""


class ModelLoadError(PredlatError):
    """A model file is missing, is not ONNX, has no dynamic batch axis, or fails to load."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot load model {path}: {reason}")
        self.path = path
        self.reason = reason


class UnknownModelError(PredlatError):
    """A model name that is neither a zoo model nor an existing .onnx file."""


class ConfigError(PredlatError):
    """A flag or config value that makes no sense (negative load, zero slots, ...)."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`: a config's or a flag's check."""
    if not condition:
        raise ConfigError(message)
