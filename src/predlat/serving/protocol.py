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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from predlat import __version__
from predlat.models.spec import NUMPY_TO_V2, ModelSpec, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
# Where the HTTP front end puts the perf_counter time of a request's first byte (scope).
ARRIVED_SCOPE_KEY = "predlat.arrived"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data", "parameters")

V2_TO_NUMPY: dict[str, np.dtype] = {v: k for k, v in NUMPY_TO_V2.items()}


class ProtocolError(Exception):
    """A request the protocol layer refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # keeps `status` across processes
        return type(self), (self.message, self.status)


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
    timeout_action: str | None = None  # REJECT / DELAY (late work); None = the model's


# -- metadata ------------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "predlat", "version": __version__, "extensions": list(EXTENSIONS)}


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": spec.v2_datatype,
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def model_metadata(spec: ModelSpec, version: str = MODEL_VERSION) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(t) for t in spec.inputs],
        "outputs": [_tensor_metadata(t) for t in spec.outputs],
    }


# -- response encoding (server side) ---------------------------------------------------


def _attach_values(
    entry: dict[str, Any], array: np.ndarray, binary: bool, chunks: list[bytes]
) -> dict[str, Any]:
    """Put a tensor's values in its JSON entry, or (binary) little-endian after the JSON
    header, appended to `chunks` in entry order. One encoding for requests and answers."""
    if binary:
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    else:
        entry["data"] = array.ravel().tolist()
    return entry


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
        entries.append(_attach_values(entry, array, binary, chunks))
    doc: dict[str, Any] = {"model_name": request.model, "model_version": MODEL_VERSION}
    if request.request_id is not None:
        doc["id"] = request.request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = entries
    header = orjson.dumps(doc)
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
        tensors.append(_attach_values(tensor, array, binary, chunks))
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
    header = orjson.dumps(doc)
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
    doc = orjson.loads(header)
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
