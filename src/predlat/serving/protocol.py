"""Open Inference Protocol v2 (the HTTP/REST protocol of Triton, KServe and MLServer):
JSON tensors, the binary tensor data extension, and validation against a ModelSpec.

Binary tensor data extension, as `tritonclient.http` uses it: the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw tensors (little-endian, row
major, no padding) of every input whose `parameters.binary_data_size` is set, in the order
the inputs appear in the header. Outputs come back the same way when the request asks for
them binary (`outputs[i].parameters.binary_data`, or `parameters.binary_data_output` for
all outputs that do not say).

This module is pure data handling (no sockets, no runtime), shared by the server, the
load generator and the tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predlat import __version__
from predlat.models.spec import NUMPY_TO_V2, ModelSpec, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data", "parameters")

V2_TO_NUMPY: dict[str, np.dtype] = {v: k for k, v in NUMPY_TO_V2.items()}

# JSON element kinds numpy infers from a `data` list that each target kind accepts:
# integers are fine in a float tensor, floats are not fine in an integer tensor.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


class ProtocolError(Exception):
    """A request the protocol layer refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request's `binary_data_output`


@dataclass
class InferRequest:
    """A decoded, validated inference request for one model."""

    model: str
    request_id: str | None
    inputs: dict[str, np.ndarray]
    rows: int  # first-axis length shared by every input
    outputs: tuple[RequestedOutput, ...] | None  # None: every output of the model
    binary_output: bool  # `binary_data_output`: default for outputs that do not say
    priority_level: int  # Triton `priority`: 0 = default, 1 = highest
    deadline_s: float | None  # from `deadline_ms` or `timeout` (microseconds); None = default


# -- metadata ------------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "predlat", "version": __version__, "extensions": list(EXTENSIONS)}


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": spec.v2_datatype,
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(t) for t in spec.inputs],
        "outputs": [_tensor_metadata(t) for t in spec.outputs],
    }


# -- request decoding (server side) ----------------------------------------------------


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header, checked against the body size."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None
    if not 0 <= length <= body_size:
        raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has {body_size} bytes")
    return length


def decode_infer_request(body: bytes, header_length: int | None, spec: ModelSpec) -> InferRequest:
    """Decode and validate an infer request body, or raise ProtocolError saying why."""
    view = memoryview(body)
    header = view if header_length is None else view[:header_length]
    binary = view[len(header) :]
    doc = _load_json_object(header)
    parameters = _object(doc.get("parameters", {}), "request 'parameters'")
    inputs = _decode_inputs(doc.get("inputs"), spec, binary)
    rows = _check_signature(inputs, spec)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("request 'id' must be a string")
    return InferRequest(
        model=spec.name,
        request_id=request_id,
        inputs=inputs,
        rows=rows,
        outputs=_decode_requested_outputs(doc.get("outputs"), spec),
        binary_output=_bool_param(parameters, "binary_data_output", False),
        priority_level=_priority_level(parameters),
        deadline_s=_deadline(parameters),
    )


def _load_json_object(data: memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(data).decode("utf-8"))  # the protocol says UTF-8, no guessing
    except UnicodeDecodeError:
        raise ProtocolError("malformed request: the JSON header is not UTF-8") from None
    except ValueError as exc:
        raise ProtocolError(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("malformed request: the body must be a JSON object")
    return doc


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _decode_inputs(items: Any, spec: ModelSpec, binary: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    by_name = {t.name: t for t in spec.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        item = _object(item, "each entry of 'inputs'")
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError("each input needs a string 'name'")
        tensor = by_name.get(name)
        if tensor is None:
            raise ProtocolError(
                f"model '{spec.name}' has no input '{name}' (inputs: {', '.join(by_name)})"
            )
        if name in inputs:
            raise ProtocolError(f"input '{name}' given twice")
        shape = _check_shape_and_type(item, tensor)
        params = _object(item.get("parameters", {}), f"input '{name}' parameters")
        if any(k.startswith("shared_memory") for k in params):
            raise ProtocolError(f"input '{name}': shared memory is not supported")
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = _json_tensor(item["data"], tensor, shape)
        else:
            if "data" in item:
                raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size")
            inputs[name] = _binary_tensor(binary, offset, size, tensor, shape)
            offset += size
    if offset != len(binary):
        raise ProtocolError(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to "
            f"{offset} (check {HEADER_LENGTH})"
        )
    return inputs


def _check_shape_and_type(item: dict[str, Any], tensor: TensorSpec) -> tuple[int, ...]:
    name = tensor.name
    datatype = item.get("datatype")
    if datatype != tensor.v2_datatype:
        raise ProtocolError(
            f"input '{name}' has datatype {datatype!r}, the model expects {tensor.v2_datatype}"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input '{name}' needs 'shape', a list of non-negative integers")
    expected = [-1 if d is None else d for d in tensor.shape]
    if len(shape) != len(expected) or any(
        e != -1 and d != e for d, e in zip(shape, expected, strict=True)
    ):
        raise ProtocolError(f"input '{name}' has shape {shape}, the model expects {expected}")
    if shape[0] < 1:
        raise ProtocolError(f"input '{name}' has an empty batch (first axis 0)")
    return tuple(shape)


def _json_tensor(data: Any, tensor: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    name = tensor.name
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': 'data' must be a list")
    try:
        array = np.asarray(data)
    except ValueError:
        raise ProtocolError(f"input '{name}': 'data' is a ragged nested list") from None
    accepted = _ACCEPTED_KINDS[tensor.dtype.kind]
    if array.size and array.dtype.kind not in accepted:
        raise ProtocolError(f"input '{name}': 'data' must hold {tensor.v2_datatype} values")
    count = math.prod(shape)
    if array.size != count:
        raise ProtocolError(
            f"input '{name}': 'data' has {array.size} values, shape {list(shape)} needs {count}"
        )
    if tensor.dtype.kind in "iu" and array.size:
        info = np.iinfo(tensor.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"input '{name}': values out of range for {tensor.v2_datatype}")
    return array.astype(tensor.dtype, copy=False).reshape(shape)


def _binary_tensor(
    binary: memoryview, offset: int, size: Any, tensor: TensorSpec, shape: tuple[int, ...]
) -> np.ndarray:
    name = tensor.name
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
    expected = math.prod(shape) * tensor.dtype.itemsize
    if size != expected:
        raise ProtocolError(
            f"input '{name}': binary_data_size is {size} bytes, shape {list(shape)} of "
            f"{tensor.v2_datatype} needs {expected}"
        )
    if offset + size > len(binary):
        raise ProtocolError(
            f"input '{name}': binary data ends at byte {offset + size} but only "
            f"{len(binary)} bytes follow the JSON header"
        )
    array = np.frombuffer(
        binary,
        dtype=tensor.dtype.newbyteorder("<"),
        count=size // tensor.dtype.itemsize,
        offset=offset,
    )
    if not array.dtype.isnative or array.ctypes.data % array.dtype.alignment:
        array = array.astype(tensor.dtype)  # engines want native, aligned buffers
    return array.reshape(shape)


def _check_signature(inputs: Mapping[str, np.ndarray], spec: ModelSpec) -> int:
    missing = [t.name for t in spec.inputs if t.name not in inputs]
    if missing:
        raise ProtocolError(f"missing input(s) {', '.join(missing)} for model '{spec.name}'")
    rows = {name: a.shape[0] for name, a in inputs.items()}
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"{n} has {r}" for n, r in rows.items())
        raise ProtocolError(f"inputs disagree on the batch size (first axis): {sizes}")
    return next(iter(rows.values()))


def _decode_requested_outputs(items: Any, spec: ModelSpec) -> tuple[RequestedOutput, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise ProtocolError("'outputs' must be a list")
    known = {t.name for t in spec.outputs}
    requested: list[RequestedOutput] = []
    for item in items:
        item = _object(item, "each entry of 'outputs'")
        name = item.get("name")
        if name not in known:
            raise ProtocolError(
                f"model '{spec.name}' has no output {name!r} (outputs: {', '.join(sorted(known))})"
            )
        params = _object(item.get("parameters", {}), f"output '{name}' parameters")
        if "classification" in params or any(k.startswith("shared_memory") for k in params):
            raise ProtocolError(f"output '{name}': classification / shared memory not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output '{name}': binary_data must be true or false")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)


def _bool_param(parameters: Mapping[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter '{key}' must be true or false")
    return value


def _priority_level(parameters: Mapping[str, Any]) -> int:
    value = parameters.get("priority", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("parameter 'priority' must be a non-negative integer (1 = highest)")
    return value


def _deadline(parameters: Mapping[str, Any]) -> float | None:
    """`deadline_ms` wins over Triton's `timeout` (microseconds; 0 means none)."""
    if "deadline_ms" in parameters:
        value = parameters["deadline_ms"]
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ProtocolError("parameter 'deadline_ms' must be a positive number")
        return float(value) / 1e3
    if "timeout" in parameters:
        value = parameters["timeout"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError("parameter 'timeout' must be a non-negative integer (microseconds)")
        return value / 1e6 if value > 0 else None
    return None


# -- response encoding (server side) ---------------------------------------------------


def encode_infer_response(
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, its JSON header length."""
    if request.outputs is None:
        wanted = [RequestedOutput(name, None) for name in outputs]
    else:
        wanted = list(request.outputs)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in wanted:
        array = np.asarray(outputs[want.name])
        entry: dict[str, Any] = {
            "name": want.name,
            "datatype": NUMPY_TO_V2[array.dtype],
            "shape": list(array.shape),
        }
        binary = request.binary_output if want.binary is None else want.binary
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": request.model, "model_version": MODEL_VERSION}
    if request.request_id is not None:
        doc["id"] = request.request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# -- client side (load generator, tests) -----------------------------------------------


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = True,
    parameters: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An infer request body and its headers, shaped the way tritonclient.http sends it."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in inputs.items():
        array = np.asarray(array)
        tensor: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": NUMPY_TO_V2[array.dtype],
        }
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    params = dict(parameters or {})
    doc["inputs"] = tensors
    if outputs is not None:
        doc["outputs"] = [
            {"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs
        ]
    elif binary_outputs:
        params["binary_data_output"] = True
    if params:
        doc["parameters"] = params
    header = json.dumps(doc, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream" if chunks else "application/json"}
    if not chunks:
        return header, headers
    headers[HEADER_LENGTH] = str(len(header))
    return b"".join([header, *chunks]), headers


def decode_infer_response(
    body: bytes, header_length: int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The response's JSON document and its outputs as arrays (binary or JSON)."""
    header = body if header_length is None else body[:header_length]
    doc = json.loads(header)
    arrays: dict[str, np.ndarray] = {}
    offset = len(header)
    for out in doc.get("outputs", []):
        dtype = V2_TO_NUMPY[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(out["data"], dtype=dtype)
        else:
            array = np.frombuffer(
                body, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize, offset=offset
            ).astype(dtype)
            offset += size
        arrays[out["name"]] = array.reshape(out["shape"])
    return doc, arrays
