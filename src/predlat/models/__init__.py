"""Models predlat serves: the built-in zoo and a user's own .onnx files."""

from predlat.models.registry import resolve_model, resolve_models
from predlat.models.spec import ModelSpec, TensorSpec, load_model_spec

__all__ = ["ModelSpec", "TensorSpec", "load_model_spec", "resolve_model", "resolve_models"]
