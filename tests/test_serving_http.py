"""The HTTP server on a real uvicorn loopback port, with a fake runtime: exact checks of
every endpoint, tritonclient and plain-JSON round trips, each error, concurrency,
metrics and graceful shutdown."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from predlat.models.spec import ModelSpec
from predlat.scheduling.request import Priority
from predlat.serving import protocol
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.server import BackgroundServer
from serving_fakes import FakeRuntime

MAX_BODY = 64 * 1024
DEFAULT_DEADLINE_S = 0.5


@pytest.fixture(scope="module")
def served(spec: ModelSpec) -> Iterator[tuple[BackgroundServer, FakeRuntime]]:
    runtime = FakeRuntime([spec])
    config = ServerConfig({"tiny": DEFAULT_DEADLINE_S}, max_body_bytes=MAX_BODY)
    with BackgroundServer(create_app(runtime, [spec], config)) as server:
        yield server, runtime
    runtime.stop()


@pytest.fixture
def server(served: tuple[BackgroundServer, FakeRuntime]) -> Iterator[BackgroundServer]:
    yield served[0]
    served[1].gate = None
    served[1].fail_next = False


@pytest.fixture
def runtime(served: tuple[BackgroundServer, FakeRuntime]) -> FakeRuntime:
    return served[1]


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def reference(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def json_body(x: np.ndarray, **params: object) -> dict:
    body = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    if params:
        body["parameters"] = params
    return body


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


# -- endpoints ---------------------------------------------------------------------------


def test_server_health_and_metadata(client: httpx.Client):
    meta = client.get("/v2").json()
    assert meta["name"] == "predlat" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    model = client.get("/v2/models/tiny").json()
    assert model == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get("/v2/models/tiny/versions/1").json() == model
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    index = client.post("/v2/repository/index").json()
    assert index == [{"name": "tiny", "version": "1", "state": "READY"}]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("GET", "/v2/models/tiny/versions/2"),
        ("POST", "/v2/models/tiny/versions/2/infer"),
        ("GET", "/v2/elsewhere"),
    ],
)
def test_unknown_models_versions_and_routes_are_404_json(client, method, path):
    response = client.request(method, path, json=json_body(rows(1)))
    assert response.status_code == 404
    assert "error" in response.json()


def test_wrong_method_is_405_json(client: httpx.Client):
    response = client.get("/v2/models/tiny/infer")
    assert response.status_code == 405 and "error" in response.json()


# -- inference ---------------------------------------------------------------------------


def server_ms(response: httpx.Response) -> float:
    """The answer's Server-Timing (ms), which must be well formed."""
    name, dur = response.headers["server-timing"].split(";")
    assert name == "server" and dur.startswith("dur=")
    return float(dur.removeprefix("dur="))


def test_plain_json_infer_like_curl(client, spec, runtime):
    x = rows(3, seed=1)
    began = time.perf_counter()
    response = client.post("/v2/models/tiny/infer", json={**json_body(x), "id": "abc"})
    client_ms = (time.perf_counter() - began) * 1e3
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["id"] == "abc" and doc["model_name"] == "tiny"
    out = doc["outputs"][0]
    assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [3, 4]
    np.testing.assert_allclose(
        np.array(out["data"], np.float32).reshape(3, 4), reference(spec, x), rtol=1e-5
    )
    params = doc["parameters"]
    assert params["predlat_status"] == "met" and params["predlat_batch_size"] == 3
    assert params["predlat_deadline_ms"] == DEFAULT_DEADLINE_S * 1e3
    assert params["predlat_priority"] == "low"
    assert params["predlat_latency_ms"] >= params["predlat_compute_ms"] >= 0
    assert runtime.submitted[-1] == ("tiny", DEFAULT_DEADLINE_S, Priority.LOW)
    # The server's time holds the runtime's (same arrival) and is held by the client's.
    assert params["predlat_latency_ms"] - 0.001 <= server_ms(response) <= client_ms


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_tritonclient_round_trip(server, spec, binary_in, binary_out):
    x = rows(2, seed=2)
    client = triton.InferenceServerClient(url=server.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.get_server_metadata()["name"] == "predlat"
        assert client.get_model_metadata("tiny")["inputs"][0]["shape"] == [-1, 16]
        inp = triton.InferInput("x", [2, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        out = triton.InferRequestedOutput("y", binary_data=binary_out)
        result = client.infer("tiny", [inp], outputs=[out], request_id="t1")
        np.testing.assert_allclose(result.as_numpy("y"), reference(spec, x), rtol=1e-5)
        assert result.get_response()["id"] == "t1"
        # no outputs named: tritonclient asks binary_data_output for all of them
        result = client.infer("tiny", [inp], model_version="1")
        np.testing.assert_allclose(result.as_numpy("y"), reference(spec, x), rtol=1e-5)
    finally:
        client.close()


def test_triton_priority_timeout_and_deadline_parameters(server, runtime):
    x = rows(1)
    client = triton.InferenceServerClient(url=server.address)
    try:
        inp = triton.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("tiny", [inp], priority=1, timeout=250_000)
        assert runtime.submitted[-1] == ("tiny", pytest.approx(0.25), Priority.HIGH)
        client.infer("tiny", [inp], priority=2)
        assert runtime.submitted[-1] == ("tiny", DEFAULT_DEADLINE_S, Priority.LOW)
        result = client.infer("tiny", [inp], parameters={"deadline_ms": 40})
        assert runtime.submitted[-1] == ("tiny", pytest.approx(0.04), Priority.LOW)
        assert result.get_response()["parameters"]["predlat_deadline_ms"] == 40
    finally:
        client.close()


def test_gzip_request_body(client, spec):
    x = rows(2)
    body = gzip.compress(json.dumps(json_body(x)).encode())
    response = client.post(
        "/v2/models/tiny/infer", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200
    got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 4)
    np.testing.assert_allclose(got, reference(spec, x), rtol=1e-5)


# -- errors ------------------------------------------------------------------------------


def infer_raw(client: httpx.Client, content: bytes, **headers: str) -> httpx.Response:
    return client.post("/v2/models/tiny/infer", content=content, headers=headers)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{oops", "malformed JSON"),
        (b"", "malformed JSON"),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 15], "datatype": "FP32", "data": [0] * 15}]}
            ).encode(),
            "shape [1, 15]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}
            ).encode(),
            "datatype 'INT32'",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
            ).encode(),
            "no input 'z'",
        ),
        (json.dumps({"outputs": [{"name": "y"}]}).encode(), "'inputs'"),
    ],
)
def test_bad_requests_are_400_and_do_not_hurt_others(client, body, message):
    response = infer_raw(client, body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert server_ms(response) >= 0  # errors are timed too
    assert client.post("/v2/models/tiny/infer", json=json_body(rows(1))).status_code == 200


def test_bad_header_length_is_400(client):
    body, headers = protocol.encode_infer_request({"x": rows(1)})
    headers[protocol.HEADER_LENGTH] = str(len(body) + 1)
    response = infer_raw(client, body, **headers)
    assert response.status_code == 400 and protocol.HEADER_LENGTH in response.json()["error"]


def test_body_over_the_limit_is_413(client):
    big = rows(MAX_BODY // 64 + 10)  # 64 bytes a row, a little over the limit
    body, headers = protocol.encode_infer_request({"x": big})
    response = infer_raw(client, body, **headers)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = client.post("/v2/models/tiny/infer", content=chunks(), headers=headers)
    assert response.status_code == 413
    bomb = gzip.compress(b" " * (MAX_BODY * 4))
    response = infer_raw(client, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in response.json()["error"]
    assert client.post("/v2/models/tiny/infer", json=json_body(rows(1))).status_code == 200


def test_unknown_content_encoding_is_415(client):
    response = infer_raw(client, b"{}", **{"Content-Encoding": "br"})
    assert response.status_code == 415 and "Content-Encoding" in response.json()["error"]


@pytest.mark.parametrize(
    ("reason", "status"),
    [("queue full (1000 waiting)", 429), ("deadline cannot be met: needs 30 ms", 503)],
)
def test_runtime_rejections_are_429_or_503_with_reason(client, runtime, reason, status):
    runtime.gate = lambda model, inputs, deadline, priority: reason
    response = client.post("/v2/models/tiny/infer", json=json_body(rows(1)))
    assert response.status_code == status
    assert response.json() == {"error": reason}


def test_engine_failure_is_500_and_server_survives(client, runtime):
    runtime.fail_next = True
    response = client.post("/v2/models/tiny/infer", json=json_body(rows(1)))
    assert response.status_code == 500 and "engine exploded" in response.json()["error"]
    assert client.post("/v2/models/tiny/infer", json=json_body(rows(1))).status_code == 200


# -- concurrency and metrics -------------------------------------------------------------


# The deadline clock starts at arrival: on a loaded machine, 20 clients' requests can
# wait past a tight deadline in the HTTP layer. This test counts answers, not deadlines.
LOOSE_MS = 60_000


def test_concurrent_burst_none_lost_and_metrics_match(server, runtime, spec):
    with httpx.Client(base_url=server.url) as probe:
        before = metric_samples(probe)
    outcomes_before = len(runtime.outcomes)
    x = rows(1, seed=3)
    expected = reference(spec, x)

    def worker(thread: int) -> list[tuple[str, int]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(10):
                request_id = f"{thread}-{i}"
                # every other request JSON, to mix both decoders under load
                if i % 2:
                    doc = {**json_body(x, deadline_ms=LOOSE_MS), "id": request_id}
                    r = c.post("/v2/models/tiny/infer", json=doc)
                    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
                    answers.append((r.json()["id"], r.status_code))
                else:
                    b, h = protocol.encode_infer_request(
                        {"x": x}, request_id=request_id, parameters={"deadline_ms": LOOSE_MS}
                    )
                    r = c.post("/v2/models/tiny/infer", content=b, headers=h)
                    doc, arrays = protocol.decode_infer_response(
                        r.content, int(r.headers[protocol.HEADER_LENGTH])
                    )
                    got = arrays["y"]
                    answers.append((doc["id"], r.status_code))
                np.testing.assert_allclose(got, expected, rtol=1e-5)
        return answers

    with ThreadPoolExecutor(20) as pool:
        answers = [a for chunk in pool.map(worker, range(20)) for a in chunk]
    assert len(answers) == 200
    assert {code for _, code in answers} == {200}
    assert sorted(rid for rid, _ in answers) == sorted(
        f"{t}-{i}" for t in range(20) for i in range(10)
    )
    assert len(runtime.outcomes) - outcomes_before == 200
    with httpx.Client(base_url=server.url) as probe:
        after = metric_samples(probe)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("predlat_requests_total", model="tiny") == 200
    assert delta("predlat_requests_total", outcome="met") == 200
    assert delta("predlat_http_responses_total", endpoint="infer", code="200") == 200
    assert delta("predlat_request_latency_seconds_count", model="tiny") == 200
    assert delta("predlat_queue_time_seconds_count") == 200
    assert delta("predlat_batch_size_count", model="tiny") == 200
    assert delta("predlat_predictor_relative_error_count", model="tiny") == 200
    assert total(after, "predlat_predictor_relative_error_ewma", model="tiny") == pytest.approx(
        0.1, rel=1e-6
    )  # the fake predicts 1.1x the real latency
    assert total(after, "predlat_inflight_requests") == 0
    assert 0 < total(after, "predlat_slot_utilization", slot="0") <= 1


def test_metrics_count_rejections_and_http_errors(client, runtime):
    before = metric_samples(client)
    runtime.gate = lambda *args: "deadline cannot be met"
    for _ in range(3):
        client.post("/v2/models/tiny/infer", json=json_body(rows(1)))
    runtime.gate = None
    client.post("/v2/models/tiny/infer", content=b"{bad")
    after = metric_samples(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("predlat_requests_total", outcome="rejected") == 3
    assert delta("predlat_http_responses_total", code="503") == 3
    assert delta("predlat_http_responses_total", code="400") == 1
    assert delta("predlat_requests_total") == 3  # the malformed one never reached the runtime


# -- shutdown ----------------------------------------------------------------------------


def test_graceful_shutdown_finishes_requests_in_flight(spec):
    runtime = FakeRuntime([spec])
    server = BackgroundServer(create_app(runtime, [spec], ServerConfig({"tiny": 5.0})))
    server.start()
    runtime.hold.set()  # requests queue up in the runtime
    x = rows(1)

    def send(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v2/models/tiny/infer", json=json_body(x)).status_code

    pool = ThreadPoolExecutor(8)
    futures = [pool.submit(send, i) for i in range(8)]
    give_up = time.monotonic() + 10
    while len(runtime.submitted) < 8 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert len(runtime.submitted) == 8
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)
    service = server.app.state.service
    assert not service.state.accepting and not service.state.ready
    assert stopper.is_alive()  # still waiting for the requests in flight
    with pytest.raises(httpx.ConnectError):  # no new connections once shutdown began
        httpx.get(server.url + "/v2/health/live", timeout=2)
    runtime.hold.clear()
    stopper.join(20)
    assert not stopper.is_alive()
    assert [f.result(timeout=10) for f in futures] == [200] * 8
    pool.shutdown()
    runtime.stop()
