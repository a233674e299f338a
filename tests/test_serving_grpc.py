"""The gRPC front end with tritonclient.grpc unchanged: health, metadata, model config,
infer with priority and timeout, and errors as gRPC status codes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from predlat.models.spec import ModelSpec  # noqa: E402
from predlat.scheduling.request import Priority  # noqa: E402
from predlat.serving.admission import DoorPolicy  # noqa: E402
from predlat.serving.app import ServerConfig, create_app  # noqa: E402
from predlat.serving.grpc_server import GrpcServer  # noqa: E402
from predlat.serving.server import BackgroundServer  # noqa: E402
from serving_fakes import FakeRuntime  # noqa: E402

InferenceServerException = grpcclient.InferenceServerException


@pytest.fixture
def served(spec: ModelSpec) -> Iterator[tuple[GrpcServer, FakeRuntime]]:
    runtime = FakeRuntime([spec])
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}, door=DoorPolicy(max_inflight=4)))
    service = app.state.service
    service.state.ready = True
    with GrpcServer(service) as server:
        yield server, runtime
    runtime.stop()


def infer(client, x: np.ndarray, **kwargs):
    item = grpcclient.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return client.infer("tiny", [item], **kwargs)


def test_health_metadata_and_config(served):
    server, _ = served
    client = grpcclient.InferenceServerClient(server.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_server_metadata().name == "predlat"
    meta = client.get_model_metadata("tiny")
    assert meta.inputs[0].name == "x" and list(meta.inputs[0].shape) == [-1, 16]
    config = client.get_model_config("tiny").config
    assert config.name == "tiny" and config.input[0].data_type == 11  # TYPE_FP32
    assert [m.name for m in client.get_model_repository_index().models] == ["tiny"]


def test_infer_round_trip_with_priority_and_timeout(served, spec):
    server, runtime = served
    client = grpcclient.InferenceServerClient(server.address)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    result = infer(client, x, priority=1, timeout=200_000)
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    name = session.get_outputs()[0].name
    np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-5)
    params = result.get_response().parameters
    assert params["predlat_status"].string_param == "met"
    assert params["predlat_deadline_ms"].double_param == pytest.approx(200.0)
    assert params["predlat_batch_size"].int64_param == 3
    assert runtime.submitted[-1] == ("tiny", pytest.approx(0.2), Priority.HIGH)
    infer(client, x)
    assert runtime.submitted[-1] == ("tiny", pytest.approx(0.5), Priority.LOW)
    # The server's own time, as gRPC trailing metadata: at least the runtime's.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[3, 16])
    request.raw_input_contents.append(x.tobytes())
    answer, call = stub.ModelInfer.with_call(request)
    timing = dict(call.trailing_metadata())["server-timing"]
    assert timing.startswith("server;dur=")
    latency_ms = answer.parameters["predlat_latency_ms"].double_param
    assert float(timing.removeprefix("server;dur=")) >= latency_ms - 0.001


def test_errors_are_grpc_status_codes(served):
    server, runtime = served
    client = grpcclient.InferenceServerClient(server.address)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("nope")
    bad = grpcclient.InferInput("x", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 15\]"):
        client.infer("tiny", [bad])
    runtime.gate = lambda *a: "deadline cannot be met: 1 ms left"
    with pytest.raises(InferenceServerException) as info:
        infer(client, np.zeros((1, 16), np.float32))
    assert info.value.status() == "StatusCode.UNAVAILABLE"


@pytest.mark.parametrize(
    ("param", "kind", "value", "named"),
    [
        ("priority", "string_param", "high", "'priority' must be a non-negative integer"),
        ("priority", "int64_param", -1, "'priority' must be a non-negative integer"),
        ("timeout", "int64_param", -5, "'timeout' must be a non-negative integer"),
        ("timeout", "double_param", 1.5, "'timeout' must be a non-negative integer"),
        ("timeout_action", "string_param", "LATER", "'timeout_action' must be"),
    ],
)
def test_bad_parameters_are_invalid_argument(served, param, kind, value, named):
    server, runtime = served
    stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(
        grpc.insecure_channel(server.address)
    )
    request = grpcclient.service_pb2.ModelInferRequest(model_name="tiny")
    item = request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    item.contents.fp32_contents.extend([0.0] * 16)
    setattr(request.parameters[param], kind, value)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.details()
    request.ClearField("parameters")
    request.outputs.add(name="nope")
    with pytest.raises(grpc.RpcError, match="has no output 'nope'"):
        stub.ModelInfer(request, timeout=10)
    assert not runtime.submitted


def test_attached_to_the_http_server_shares_its_loop_and_lifetime(spec):
    runtime = FakeRuntime([spec])
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}))
    announced: list[str] = []
    grpc_server = GrpcServer(app.state.service, announce=announced.append).attach()
    with BackgroundServer(app):
        client = grpcclient.InferenceServerClient(announced[0])
        assert infer(client, np.zeros((2, 16), np.float32)).as_numpy("y").shape[0] == 2
        assert client.is_server_ready()
    assert grpc_server.port > 0 and announced == [grpc_server.address]
    with pytest.raises(InferenceServerException):  # stopped with the HTTP server
        grpcclient.InferenceServerClient(announced[0]).is_server_live()
    runtime.stop()
