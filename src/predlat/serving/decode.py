"""Decoding infer requests (server side): JSON with orjson, tensors with numpy, and big
bodies off the event loop.

orjson and numpy hold the GIL while they work, so a 3 MB JSON tensor decoded on a thread
still stalls the event loop for its whole decode. `OffLoopDecoder` hands bodies over a size
threshold to worker processes instead; small bodies and binary tensors (a zero-copy view
of the body) are decoded inline, where a hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import orjson

from predlat.devices.priority import lower_priority
from predlat.models.spec import ModelSpec, TensorSpec
from predlat.serving.handoff import SegmentPool, decode_shared
from predlat.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    RequestedOutput,
)

log = logging.getLogger(__name__)

# JSON element kinds numpy infers from a `data` list that each target kind accepts:
# integers are fine in a float tensor, floats are not fine in an integer tensor.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
# JSON bytes past which a body is decoded in a worker process (~1 ms of orjson + numpy).
DEFAULT_OFFLOAD_BYTES = 128 * 1024
# Until measured: ~12 ms per MB of JSON tensor (orjson + numpy on a modern core).
_INITIAL_SECONDS_PER_BYTE = 12e-9
_EWMA_WEIGHT = 0.3  # adapts within a few bodies when the machine slows down


class OffLoopDecoder:
    """Decodes infer requests; JSON parts over `offload_bytes` off the event loop, in
    `processes` worker processes (0: a thread, which frees the loop only between GIL
    switches) whose nice value is raised by `nice` (the loop wins the cores)."""

    def __init__(
        self, processes: int = 0, offload_bytes: int = DEFAULT_OFFLOAD_BYTES, nice: int = 0
    ) -> None:
        self.processes = processes
        self.nice = nice
        self.offload_bytes = offload_bytes
        self._pool: ProcessPoolExecutor | None = None
        self.pending = 0  # offloaded bodies waiting or being decoded
        self.seconds_per_byte = _INITIAL_SECONDS_PER_BYTE  # EWMA of measured decodes
        self.read_seconds_per_byte = 0.0  # EWMA of measured body reads
        self._segments = SegmentPool(keep=4 * max(1, processes))

    def start(self) -> None:
        """Start and warm the workers (imports take ~1 s: not on the first request)."""
        if self.processes <= 0 or self._pool is not None:
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe beside threads
        self._pool = ProcessPoolExecutor(
            self.processes, mp_context=context, initializer=_init_worker, initargs=(self.nice,)
        )
        for done in [self._pool.submit(_warm) for _ in range(self.processes)]:
            done.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._segments.close()

    def forecast_wait(self, body_bytes: int, reading: bool = False) -> float:
        """Seconds a body of this size would spend waiting for and in decoding (and, with
        `reading`, being read), from its Content-Length alone: the door refuses work the
        decode backlog would make late."""
        if body_bytes < self.offload_bytes:
            return 0.0
        lanes = max(1, self.processes)
        wait = self.seconds_per_byte * body_bytes * (1.0 + self.pending / lanes)
        return wait + (self.read_seconds_per_byte * body_bytes if reading else 0.0)

    def observe_read(self, body_bytes: int, seconds: float) -> None:
        """How long reading a big body took (the network and the HTTP parser)."""
        if body_bytes >= self.offload_bytes:
            rate = seconds / body_bytes
            self.read_seconds_per_byte += _EWMA_WEIGHT * (rate - self.read_seconds_per_byte)

    async def decode(self, body: bytes, header_length: int | None, spec: ModelSpec) -> InferRequest:
        json_bytes = len(body) if header_length is None else header_length
        if json_bytes < self.offload_bytes:
            return decode_infer_request(body, header_length, spec)
        ahead = self.pending / max(1, self.processes)
        self.pending += 1
        began = time.perf_counter()
        try:
            decoded = await self._offload(body, header_length, spec)
        finally:
            self.pending -= 1
        # The whole hand-off (copies to and from the worker included), less the queue
        # it found ahead of it: what one more body costs.
        rate = (time.perf_counter() - began) / (1.0 + ahead) / max(1, len(body))
        self.seconds_per_byte += _EWMA_WEIGHT * (rate - self.seconds_per_byte)
        return decoded

    async def _offload(
        self, body: bytes, header_length: int | None, spec: ModelSpec
    ) -> InferRequest:
        if self._pool is not None:
            segment = self._segments.put(body)  # not pickled under the GIL: handoff.py
            call = (
                (decode_infer_request, body)
                if segment is None
                else (decode_shared, segment.name, len(body))
            )
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._pool, *call, header_length, spec
                )
            except BrokenProcessPool:  # a worker died (OOM kill): keep serving on a thread
                log.warning("decode worker pool broke; decoding on a thread from now on")
                self._pool = None
            finally:
                if segment is not None:
                    self._segments.give_back(segment)
        return await asyncio.to_thread(decode_infer_request, body, header_length, spec)


def _init_worker(nice: int) -> None:
    """Ctrl-C reaches the whole process group: the server shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_priority(nice)


def _warm() -> None:
    orjson.loads(b"[1]")


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
        timeout_action=_timeout_action(parameters),
    )


def _load_json_object(data: memoryview) -> dict[str, Any]:
    try:  # orjson: a C parser, UTF-8 only (as the protocol says), nesting capped at 1024
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON in request body: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed request: JSON nested too deeply") from None
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
    except (ValueError, RecursionError):
        raise ProtocolError(f"input '{name}': 'data' is a ragged or too deep nested list") from None
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


def _timeout_action(parameters: Mapping[str, Any]) -> str | None:
    value = parameters.get("timeout_action")
    if value is None:
        return None
    if value not in ("REJECT", "DELAY"):
        raise ProtocolError('parameter \'timeout_action\' must be "REJECT" or "DELAY"')
    return value
