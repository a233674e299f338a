"""Fast decoding off the event loop, shedding at the door before the body is decoded,
the deadline clock starting at arrival, and the REJECT / DELAY late-work policy."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predlat.models.spec import ModelSpec
from predlat.scheduling.request import Priority
from predlat.serving import decode
from predlat.serving.admission import Door, DoorPolicy, late_for_decode
from predlat.serving.app import InferenceService, ServerConfig, create_app
from predlat.serving.protocol import ARRIVED_SCOPE_KEY
from predlat.serving.server import BackgroundServer
from serving_fakes import FakeRuntime

INFER = "/v2/models/tiny/infer"


def serve(runtime: FakeRuntime, spec: ModelSpec, **config: object) -> BackgroundServer:
    forecast = config.pop("forecast", None)
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}, **config), forecast=forecast)
    return BackgroundServer(app)


def body(rows: int = 1, **params: object) -> bytes:
    x = np.zeros((rows, 16), np.float32)
    doc: dict = {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = x.ravel().tolist()
    if params:
        doc["parameters"] = params
    return orjson.dumps(doc)


def samples(client: httpx.Client, name: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_big_body_decodes_off_the_loop_while_a_small_one_is_answered(runtime, spec, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    real = decode.decode_infer_request

    def slow_decode(data: bytes, length: int | None, model: ModelSpec):  # a stuck decode
        entered.set()
        assert release.wait(10)
        return real(data, length, model)

    monkeypatch.setattr(decode, "decode_infer_request", slow_decode)
    with serve(runtime, spec, offload_bytes=10_000) as server, ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.post, server.url + INFER, content=body(rows=500), timeout=20)
        assert entered.wait(10)
        monkeypatch.setattr(decode, "decode_infer_request", real)  # small bodies: inline
        small = httpx.post(server.url + INFER, content=body(), timeout=5)
        assert small.status_code == 200 and not big.done()
        release.set()
        assert big.result().status_code == 200
        assert runtime.waits[-1] > 0  # decode time counted against the deadline


def test_big_json_body_decoded_in_a_worker_process(runtime, spec):
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    doc = {"inputs": [{"name": "x", "shape": [2000, 16], "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = x.ravel().tolist()
    with serve(runtime, spec, decode_processes=1, offload_bytes=1000) as server:
        answer = httpx.post(server.url + INFER, content=orjson.dumps(doc), timeout=20)
        assert answer.status_code == 200
        bad = httpx.post(server.url + INFER, content=b"[" * 5000, timeout=20)
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]


def test_deeply_nested_body_is_400_not_500(runtime, spec):
    deep = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with serve(runtime, spec) as server:
        answer = httpx.post(server.url + INFER, content=deep, timeout=10)
    assert answer.status_code == 400
    assert "malformed JSON" in answer.json()["error"]


def test_full_inflight_budget_refuses_before_decoding_with_retry_after(runtime, spec):
    runtime.hold.set()  # the first request stays in flight
    with (
        serve(runtime, spec, door=DoorPolicy(max_inflight=1)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(client.post, INFER, content=body())
        deadline = time.monotonic() + 5
        while not runtime.submitted and time.monotonic() < deadline:
            time.sleep(0.005)
        refused = client.post(INFER, content=b"{not even json")  # never decoded
        runtime.hold.clear()
        assert first.result().status_code == 200
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["reason"] == "inflight_budget_full"
        counted = samples(client, "predlat_refusals_total")
        assert counted[(("model", "tiny"), ("reason", "inflight_budget_full"))] == 1


def test_deadline_below_forecast_is_refused_from_headers_alone(runtime, spec):
    with serve(runtime, spec, forecast=lambda model, priority, waiting: 0.2) as server:
        url = server.url + INFER
        tight = httpx.post(url, content=b"garbage", headers={"predlat-deadline-ms": "50"})
        roomy = httpx.post(url, content=body(), headers={"predlat-deadline-ms": "400"})
    assert tight.status_code == 503
    assert tight.json()["reason"] == "deadline_below_forecast"
    assert "200.0 ms" in tight.json()["error"]
    assert roomy.status_code == 200
    assert not any(deadline < 0.4 for _, deadline, _ in runtime.submitted)


def test_refusal_latency_is_timed_from_the_first_byte(runtime, spec, monkeypatch):
    stamped = []
    real = InferenceService.infer

    async def infer(self, request):  # what the server's protocol put in the scope
        stamped.append(request.scope.get(ARRIVED_SCOPE_KEY))
        return await real(self, request)

    monkeypatch.setattr(InferenceService, "infer", infer)
    with (
        serve(runtime, spec, forecast=lambda model, priority, waiting: 0.2) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        before = time.perf_counter()
        tight = client.post(INFER, content=body(), headers={"predlat-deadline-ms": "50"})
        roomy = client.post(INFER, content=body(), headers={"predlat-deadline-ms": "400"})
        timed = samples(client, "predlat_refusal_latency_seconds_count")
    assert tight.status_code == 503 and roomy.status_code == 200
    assert timed == {(): 1.0}
    # The refusal was answered from the parser's callback (early.py); the handler got
    # the admitted request, stamped at its first byte.
    assert len(stamped) == 1 and before < stamped[0] < time.perf_counter()


def test_late_work_policy_reject_by_default_delay_on_request(runtime, spec):
    def gate(model, inputs, deadline_s, priority):  # only relaxed deadlines are feasible
        return None if deadline_s > 1.0 else "deadline cannot be met: 0.5 ms left"

    runtime.gate = gate
    with serve(runtime, spec) as server, httpx.Client(base_url=server.url) as client:
        rejected = client.post(INFER, content=body())
        delayed = client.post(INFER, content=body(timeout_action="DELAY"))
        bad = client.post(INFER, content=body(timeout_action="LATER"))
        delayed_count = samples(client, "predlat_delayed_requests_total")
    assert rejected.status_code == 503 and "deadline cannot be met" in rejected.json()["error"]
    assert delayed.status_code == 200
    assert delayed_count[(("model", "tiny"),)] == 1
    assert bad.status_code == 400 and "timeout_action" in bad.json()["error"]


def test_model_policy_delay_and_late_answers_counted(runtime, spec):
    def gate(model, inputs, deadline_s, priority):  # only relaxed deadlines are feasible
        return None if deadline_s > 1.0 else "deadline cannot be met: no"

    runtime.gate = gate
    policy = DoorPolicy(timeout_action={"tiny": "DELAY"}, delay_factor=4.0)
    with serve(runtime, spec, door=policy) as server, httpx.Client(base_url=server.url) as c:
        assert c.post(INFER, content=body()).status_code == 200
        assert runtime.submitted[-1][1] == pytest.approx(2.0)  # 4 x the 0.5 s default
        runtime.gate = None
        runtime.hold.set()
        threading.Timer(0.3, runtime.hold.clear).start()
        late = c.post(INFER, content=body(deadline_ms=100))
        assert late.status_code == 200
        assert samples(c, "predlat_late_answers_total")[(("model", "tiny"),)] == 1


def test_triton_named_metrics(runtime, spec):
    runtime.gate = lambda m, i, d, p: "deadline cannot be met" if p.name == "HIGH" else None
    with serve(runtime, spec) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.post(INFER, content=body(rows=2)).status_code == 200
        assert client.post(INFER, content=body(priority=1)).status_code == 503
        text = client.get("/metrics").text
        tiny = (("model", "tiny"), ("version", "1"))
        assert samples(client, "nv_inference_request_success")[tiny] == 3
        assert samples(client, "nv_inference_count")[tiny] == 6  # rows
        assert samples(client, "nv_inference_exec_count")[tiny] == 3
        failure = samples(client, "nv_inference_request_failure")
        assert failure[(("model", "tiny"), ("reason", "REJECTED"), ("version", "1"))] == 1
        for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
            assert samples(client, f"nv_inference_{name}_duration_us")[tiny] > 0
        assert samples(client, "nv_inference_pending_request_count")[tiny] == 0
        assert "nv_inference_request_success_total" not in text  # Triton's exact names


def test_grafana_dashboard_charts_only_metrics_the_server_exposes(runtime, spec):
    path = Path(__file__).parents[1] / "deploy" / "grafana" / "predlat.json"
    board = json.loads(path.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total)$", "", m) for e in exprs for m in re.findall(
        r"\b(?:nv_inference|predlat)_[a-z_]+", e)}  # fmt: skip
    with serve(runtime, spec) as server, httpx.Client(base_url=server.url) as client:
        client.post(INFER, content=body())
        exposed = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert used and used <= exposed, used - exposed


def test_decode_backlog_refuses_big_bodies_at_the_door(runtime, spec):
    with serve(runtime, spec, offload_bytes=1000) as server:
        decoder = server.app.state.service.decoder
        decoder.seconds_per_byte = 1e-3  # 2 s for the 2 kB body below: past 500 ms
        big = httpx.post(server.url + INFER, content=b"x" * 2000)  # never decoded
        small = httpx.post(server.url + INFER, content=body())  # inline: no decode wait
    assert big.status_code == 503 and big.json()["reason"] == "deadline_below_forecast"
    assert "of it decoding" in big.json()["error"]
    assert small.status_code == 200


def test_decode_wait_forecast_grows_with_the_backlog():
    decoder = decode.OffLoopDecoder(processes=2, offload_bytes=100)
    decoder.seconds_per_byte = 1e-6
    assert decoder.forecast_wait(50) == 0.0  # decoded inline
    alone = decoder.forecast_wait(1000)
    decoder.pending = 4
    assert alone == pytest.approx(1e-3) and decoder.forecast_wait(1000) == pytest.approx(3e-3)
    decoder.observe_read(1000, 0.01)  # 10 us per byte, EWMA from 0
    assert decoder.read_seconds_per_byte > 0
    reading = decoder.forecast_wait(1000, reading=True) - decoder.forecast_wait(1000)
    assert reading == pytest.approx(1000 * decoder.read_seconds_per_byte)


def test_read_then_late_for_decode_is_refused_without_decoding(runtime, spec):
    with serve(runtime, spec, offload_bytes=1000) as server:
        server.app.state.service.decoder.seconds_per_byte = 1e-4  # 0.2 s for 2 kB
        headers = {"predlat-deadline-ms": "150"}
        chunked = iter([b"x" * 1000, b"x" * 1000])  # no Content-Length: the door lets it in
        late = httpx.post(server.url + INFER, content=chunked, headers=headers)
    assert late.status_code == 503
    assert late.json()["reason"] == "deadline_passed_before_decode"
    assert runtime.submitted == []


def test_late_for_decode_needs_a_firm_deadline():
    assert late_for_decode(None, 1.0, 5.0) is None  # the body may carry a longer one
    assert late_for_decode(0.15, 0.05, 0.05) is None
    refusal = late_for_decode(0.15, 0.12, 0.05)
    assert refusal is not None and refusal.reason == "deadline_passed_before_decode"
    assert "120.0 ms went reading" in refusal.message


def test_budget_keeps_a_reserve_for_high_priority():
    door = Door(DoorPolicy(max_inflight=10, high_reserve=0.2))
    for _ in range(8):
        door.enter("m")
    low = door.check("m", 1.0)
    assert low is not None and low.reason == "inflight_budget_full"
    assert door.check("m", 1.0, priority=Priority.HIGH) is None
    door.enter("m")
    door.enter("m")
    assert door.check("m", 1.0, priority=Priority.HIGH) is not None
