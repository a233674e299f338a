"""What predlat knows about a model: its file, inputs and outputs.

A `ModelSpec` is read from the model itself (an ONNX graph, or a `torch.export` program
saved as `.pt2`), so a zoo model and a user's file are handled the same way everywhere
after loading. Full-size models built in torch (`torch_zoo`) declare their spec in code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from predlat.errors import ModelLoadError

# ONNX element types predlat can feed, mapped to numpy dtypes and protocol v2 datatypes.
_ONNX_TO_NUMPY: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}

NUMPY_TO_V2: dict[np.dtype, str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape[0]` is the batch axis and is always None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def v2_datatype(self) -> str:
        return NUMPY_TO_V2[self.dtype]

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """Concrete shape for a batch; unknown non-batch dims default to 1."""
        return (batch_size, *(d if d is not None else 1 for d in self.shape[1:]))


# What a ModelSpec is made of: an ONNX file (any device), a torch.export program file
# (torch device only), or a full-size model built in torch code (torch device only).
ONNX, PT2, TORCH = "onnx", "pt2", "torch"


@dataclass(frozen=True)
class ModelSpec:
    """A loadable model: a name, its file and its I/O signature."""

    name: str
    path: Path | None  # None for models built in code (format TORCH)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    digest: str  # sha256 of the file (or the code): profiles reuse only the same bytes
    format: str = ONNX

    @property
    def onnx_path(self) -> Path:
        """The ONNX file, for ONNX Runtime and graph analysis; a clear error otherwise."""
        if self.format != ONNX or self.path is None:
            what = "a torch.export program (.pt2)" if self.format == PT2 else "built in torch"
            raise ModelLoadError(
                self.path or self.name, f"it is {what}, so it runs only with --device torch"
            )
        return self.path

    @classmethod
    def of_file(
        cls,
        path: Path,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        name: str | None = None,
        format: str = ONNX,
    ) -> ModelSpec:
        """A model loaded from `path`: named after the file unless `name` is given, and
        identified by the file's bytes."""
        name = name or path.stem
        return cls(name, path, inputs, outputs, file_digest(path), format)

    def random_inputs(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Inputs of the right shapes and dtypes; integer inputs stay in [0, 100)
        so they are valid token ids for any embedding table of at least that size."""
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = spec.sample_shape(batch_size)
            if spec.dtype.kind in "iu":
                feeds[spec.name] = rng.integers(0, 100, size=shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return feeds


def _tensor_spec(value_info: onnx.ValueInfoProto, path: Path, check_batch: bool) -> TensorSpec:
    ttype = value_info.type.tensor_type
    if ttype.elem_type not in _ONNX_TO_NUMPY:
        name = onnx.TensorProto.DataType.Name(ttype.elem_type)
        raise ModelLoadError(path, f"tensor '{value_info.name}' has unsupported type {name}")
    dims: list[int | None] = []
    for dim in ttype.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None)
    dims = batch_dims(dims, value_info.name, path, check_batch)
    return TensorSpec(value_info.name, _ONNX_TO_NUMPY[ttype.elem_type], dims)


def batch_dims(
    dims: list[int | None], name: str, path: Path | str, is_input: bool, fix: str = ""
) -> tuple[int | None, ...]:
    """A tensor's dims with axis 0 as the batch axis: an input must have it dynamic (else
    a ModelLoadError, ending with `fix` where the format has one); an output's axis 0 is
    the batch's whatever the file says."""
    if is_input:
        if not dims:
            raise ModelLoadError(path, f"input '{name}' is a scalar, no batch axis")
        if dims[0] is not None:
            raise ModelLoadError(
                path,
                f"input '{name}' has a fixed first axis ({dims[0]}); "
                f"predlat needs a dynamic batch axis{fix}",
            )
    elif dims:
        dims[0] = None
    return tuple(dims)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model_spec(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a model's signature from its ONNX or `.pt2` file, or raise ModelLoadError
    saying why."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    if path.suffix.lower() == ".pt2":
        from predlat.models.pt2 import pt2_spec  # needs torch: imported only for .pt2

        return pt2_spec(path, name)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelLoadError(path, f"not an ONNX model ({type(exc).__name__})") from None
    if not proto.graph.node:
        raise ModelLoadError(path, "not an ONNX model (empty graph)")
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    if not graph_inputs:
        raise ModelLoadError(path, "graph has no inputs")
    inputs = tuple(_tensor_spec(vi, path, check_batch=True) for vi in graph_inputs)
    outputs = tuple(_tensor_spec(vi, path, check_batch=False) for vi in proto.graph.output)
    return ModelSpec.of_file(path, inputs, outputs, name)
