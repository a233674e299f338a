"""The Open Inference Protocol v2 over gRPC (Triton's GRPCInferenceService), beside HTTP,
so `tritonclient.grpc` works unchanged: health, metadata, model config, and infer with
Triton's `priority` and `timeout` parameters.

The service definitions are the compiled protobufs tritonclient ships (`service_pb2`,
`model_config_pb2`): no code generation. Requests go through the same
InferenceService (door, deadline clock, late-work policy, metrics) as HTTP.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from predlat import __version__
from predlat.models.spec import NUMPY_TO_V2, ModelSpec
from predlat.scheduling.outcome import RequestOutcome
from predlat.serving import protocol
from predlat.serving.admission import Refusal, answered_after
from predlat.serving.answers import (
    SERVER_TIMING,
    outcome_parameters,
    priority_from_level,
    rejection_status,
    server_timing,
)
from predlat.serving.app import InferenceService
from predlat.serving.decode import (
    _check_shape_and_type,
    _check_signature,
    _deadline,
    _priority_level,
    _timeout_action,
)
from predlat.serving.protocol import InferRequest, ProtocolError

DEFAULT_GRPC_PORT = 8001
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# InferTensorContents field per numpy kind/size, for inputs not sent as raw bytes.
_CONTENTS = {"f4": "fp32_contents", "f8": "fp64_contents", "i8": "int64_contents",
             "i4": "int_contents", "b1": "bool_contents", "u8": "uint64_contents",
             "u4": "uint_contents"}  # fmt: skip


def _param(params: Any, key: str) -> Any:
    if key not in params:
        return None
    return getattr(params[key], params[key].WhichOneof("parameter_choice"))


def door_parameters(request: Any) -> tuple[float | None, int]:
    """Triton's `timeout` (s; None: the model's) and `priority` level, checked as HTTP
    checks them: a bad value is INVALID_ARGUMENT, not an internal error or a refusal."""
    params = {k: _param(request.parameters, k) for k in ("timeout", "priority")}
    params = {k: v for k, v in params.items() if v is not None}
    return _deadline(params), _priority_level(params)


def decode_grpc_request(request: Any, spec: ModelSpec) -> InferRequest:
    """A ModelInferRequest as an InferRequest, validated as HTTP bodies are."""
    by_name = {t.name: t for t in spec.inputs}
    raw = list(request.raw_input_contents)
    inputs: dict[str, np.ndarray] = {}
    for i, item in enumerate(request.inputs):
        tensor = by_name.get(item.name)
        if tensor is None:
            known = ", ".join(by_name)
            raise ProtocolError(f"model '{spec.name}' has no input '{item.name}' ({known})")
        shape = _check_shape_and_type(
            {"datatype": item.datatype, "shape": list(item.shape)}, tensor
        )
        if raw:
            if i >= len(raw):
                raise ProtocolError(f"input '{item.name}' has no raw_input_contents")
            expected = math.prod(shape) * tensor.dtype.itemsize
            if len(raw[i]) != expected:
                raise ProtocolError(
                    f"input '{item.name}': {len(raw[i])} bytes, shape {list(shape)} of "
                    f"{tensor.v2_datatype} needs {expected}"
                )
            array = np.frombuffer(raw[i], dtype=tensor.dtype.newbyteorder("<"))
        else:
            field = _CONTENTS.get(f"{tensor.dtype.kind}{tensor.dtype.itemsize}")
            values = getattr(item.contents, field) if field else []
            array = np.asarray(values, dtype=tensor.dtype)
            if array.size != math.prod(shape):
                raise ProtocolError(f"input '{item.name}': contents do not match its shape")
        inputs[item.name] = array.astype(tensor.dtype, copy=False).reshape(shape)
    known = {t.name for t in spec.outputs}
    for wanted in request.outputs:
        if wanted.name not in known:
            names = ", ".join(sorted(known))
            raise ProtocolError(f"model '{spec.name}' has no output '{wanted.name}' ({names})")
    deadline_s, level = door_parameters(request)
    action = _timeout_action({"timeout_action": _param(request.parameters, "timeout_action")})
    return InferRequest(
        model=spec.name,
        request_id=request.id or None,
        inputs=inputs,
        rows=_check_signature(inputs, spec),
        outputs=None,
        binary_output=True,
        priority_level=level,
        deadline_s=deadline_s,
        timeout_action=action,
    )


def _datatype(dtype: np.dtype) -> int:
    return getattr(model_config_pb2, f"TYPE_{NUMPY_TO_V2[dtype]}")


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs tritonclient.grpc uses, over one InferenceService."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def _spec(self, name: str, version: str = "") -> ModelSpec:
        return self.service.catalog.get(name, version)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        state = self.service.state
        return service_pb2.ServerReadyResponse(ready=state.ready and state.accepting)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        catalog = self.service.catalog
        ready = self.service.state.ready and request.name in catalog.specs
        ready = ready and request.name not in catalog.unloaded
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        extensions = list(protocol.EXTENSIONS)
        return service_pb2.ServerMetadataResponse(
            name="predlat", version=__version__, extensions=extensions
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        spec = await self._or_abort(context, self._spec, request.name, request.version)
        doc = protocol.model_metadata(spec, self.service.catalog.version(spec.name))
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]],
            outputs=[tensor(**t) for t in doc["outputs"]],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        spec = await self._or_abort(context, self._spec, request.name, request.version)
        dims = lambda t: [-1 if d is None else d for d in t.shape]  # noqa: E731
        config = model_config_pb2.ModelConfig(
            name=spec.name,
            platform=protocol.PLATFORM,
            input=[
                model_config_pb2.ModelInput(name=t.name, data_type=_datatype(t.dtype), dims=dims(t))
                for t in spec.inputs
            ],
            output=[
                model_config_pb2.ModelOutput(
                    name=t.name, data_type=_datatype(t.dtype), dims=dims(t)
                )
                for t in spec.outputs
            ],
        )
        return service_pb2.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        index = self.service.catalog.index(self.service.state.ready)
        return service_pb2.RepositoryIndexResponse(models=[entry(**e) for e in index])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        load, params = self.service.catalog.load, dict(request.parameters)
        await self._or_abort(context, load, request.model_name, params)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._or_abort(context, self.service.catalog.unload, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        arrived = time.perf_counter()
        service = self.service
        spec = await self._or_abort(context, self._spec, request.model_name, request.model_version)
        timeout_s, level = await self._or_abort(context, door_parameters, request)
        door_deadline = service.config.request_deadline(spec.name, timeout_s)
        queue_cap = service.config.settings(spec.name).max_queue_size
        priority = priority_from_level(level) if level else None
        ticket = service.door.admit(spec.name, door_deadline, queue_cap, 0.0, priority)
        if not isinstance(ticket, Refusal) and not service.state.accepting:
            service.door.leave(ticket)
            ticket = Refusal(503, "shutting_down", "server is shutting down")
        if isinstance(ticket, Refusal):
            service.metrics.observe_refusal(spec.name, ticket.reason)
            service.metrics.refusal_latency.observe(time.perf_counter() - arrived)
            await context.abort(_CODES.get(ticket.status, grpc.StatusCode.UNAVAILABLE),
                                ticket.message)  # fmt: skip
        answered_s = None
        try:  # the door counts it from here (shared with HTTP's loop)
            decoded = await self._or_abort(context, decode_grpc_request, request, spec)
            decoded_at = time.perf_counter()
            result = await service.execute(spec, decoded, arrived)
            answered_s = answered_after(_status_of(result), arrived, door_deadline)
        finally:
            service.door.leave(ticket, answered_s)
        if isinstance(result, Refusal):
            await context.abort(_CODES.get(result.status, grpc.StatusCode.UNAVAILABLE),
                                result.message)  # fmt: skip
        if result.status == "rejected":
            code = _CODES[rejection_status(result)]
            await context.abort(code, result.reason or "rejected")
        if result.status not in ("met", "missed") or result.outputs is None:
            await context.abort(grpc.StatusCode.INTERNAL, f"inference failed: {result.reason}")
        params = outcome_parameters(
            result, service.deadline_of(spec, decoded), service.priority_of(spec, decoded)
        )
        encoding = time.perf_counter()
        response = self._response(decoded, result.outputs, params)
        # The server-side times HTTP answers report too, and the handler time not spent
        # in the runtime (HTTP observes that in InferenceService.infer).
        done = service.observe_answer(spec.name, arrived, decoded_at - arrived, encoding, result)
        context.set_trailing_metadata(((SERVER_TIMING.lower(), server_timing(done - arrived)),))
        if result.end is not None:
            runtime_s = result.end - result.arrival
            service.metrics.server_overhead.observe(max(0.0, done - arrived - runtime_s))
        return response

    def _response(
        self, decoded: InferRequest, outputs: dict[str, np.ndarray], params: dict[str, Any]
    ) -> Any:
        response = service_pb2.ModelInferResponse(
            model_name=decoded.model, model_version=protocol.MODEL_VERSION,
            id=decoded.request_id or "",
        )  # fmt: skip
        for key, value in params.items():  # predlat_* as HTTP answers carry them
            kind = {bool: "bool_param", int: "int64_param", float: "double_param"}
            setattr(response.parameters[key], kind.get(type(value), "string_param"), value)
        for name, value in outputs.items():
            array = np.asarray(value)
            response.outputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype], shape=array.shape)
            response.raw_output_contents.append(
                np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
        return response

    async def _or_abort(self, context: Any, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ProtocolError as exc:
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT),
                                exc.message)  # fmt: skip


class GrpcServer:
    """The gRPC front end. In `predlat serve` it shares the HTTP server's event loop
    (`attach`: started and stopped by the app's lifespan, no thread hop per request);
    standalone (`start`, tests) it runs its own loop on a thread."""

    def __init__(
        self,
        service: InferenceService,
        host: str = "127.0.0.1",
        port: int = 0,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self._server: Any = None
        self._bind = f"{host}:{port}"
        self._announce = announce
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self._bind.rsplit(':', 1)[0]}:{self.port}"

    def attach(self) -> GrpcServer:
        """Serve on the HTTP app's loop, from its start-up to its shutdown."""
        self.service.companions.append(self)
        return self

    async def start_here(self) -> None:
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", self.service.config.max_body_bytes)]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.service), self._server
        )
        self.port = self._server.add_insecure_port(self._bind)
        await self._server.start()
        if self._announce is not None:
            self._announce(self.address)

    async def stop_here(self, grace_s: float) -> None:
        """Refuse new calls, let those in flight finish (the runtime still runs)."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    # -- standalone, on a thread of its own ----------------------------------------------
    def start(self) -> GrpcServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="predlat-grpc")  # fmt: skip
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start_here(), self._loop).result(10)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop_here(grace_s), self._loop)
        future.result(grace_s + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _status_of(result: RequestOutcome | Refusal) -> int:
    """The HTTP status the result would be answered with (what the door learns from)."""
    if isinstance(result, Refusal):
        return result.status
    if result.status == "rejected":
        return rejection_status(result)
    return 200 if result.status in ("met", "missed") else 500
