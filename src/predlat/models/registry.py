"""Turn what a user typed (a zoo name or a path) into a loaded, validated ModelSpec."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable
from pathlib import Path

import onnx

from predlat.errors import ModelLoadError, UnknownModelError
from predlat.models import layers, torch_zoo, zoo
from predlat.models.spec import ONNX, ModelSpec, load_model_spec
from predlat.paths import cache_dir


def zoo_definition_digest(name: str) -> str:
    """Hash of the code that defines a zoo model: a changed builder means a rebuild."""
    builder = zoo.BUILDERS[name]
    text = inspect.getsource(builder) + inspect.getsource(layers) + onnx.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def zoo_model_path(name: str, root: Path | None = None) -> Path:
    """Path of the built zoo model, building it only if its definition changed."""
    if name not in zoo.BUILDERS:
        raise UnknownModelError(f"unknown zoo model '{name}' (zoo: {', '.join(zoo.BUILDERS)})")
    folder = (root or cache_dir()) / "zoo"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{zoo_definition_digest(name)}.onnx"
    if not path.exists():
        proto = zoo.BUILDERS[name]()
        tmp = path.with_suffix(".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def _check_loads_in_ort(spec: ModelSpec) -> None:
    import onnxruntime as ort  # here: importing the models must not import ONNX Runtime

    try:
        ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(spec.path, f"ONNX Runtime cannot load it: {reason}") from None


def resolve_model(name_or_path: str, root: Path | None = None, validate: bool = True) -> ModelSpec:
    """A zoo name (`resnet`), a full-size name (`resnet50`, torch device only), or a path
    to an .onnx or .pt2 file; anything else is an error."""
    if name_or_path in zoo.BUILDERS:
        return load_model_spec(zoo_model_path(name_or_path, root), name=name_or_path)
    if name_or_path in torch_zoo.FULL_SIZE:
        return torch_zoo.full_size_spec(name_or_path)
    path = Path(name_or_path)
    if path.suffix.lower() not in (".onnx", ".pt2") and not path.exists():
        raise UnknownModelError(
            f"unknown model '{name_or_path}': not a zoo model ({', '.join(zoo.BUILDERS)}), "
            f"not a full-size model ({', '.join(torch_zoo.FULL_SIZE)}) "
            "and not an existing .onnx or .pt2 file"
        )
    spec = load_model_spec(path)
    if validate and spec.format == ONNX:
        _check_loads_in_ort(spec)
    return spec


def resolve_models(names: Iterable[str], root: Path | None = None) -> list[ModelSpec]:
    specs = [resolve_model(n, root) for n in names]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UnknownModelError(f"model name '{spec.name}' given twice")
        seen.add(spec.name)
    return specs
