"""The HTTP server on the real runtime (tiny model, ONNX Runtime, predlat policy):
tritonclient round trip against ONNX Runtime run directly, a concurrent burst with none
lost, metrics matching the runtime's counts, refusals, graceful shutdown, a runtime the
app hosts on its event loop, and `predlat serve` stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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

from predlat.models.registry import resolve_model
from predlat.models.spec import ModelSpec
from predlat.runtime import Runtime, build_runtime
from predlat.serving import protocol
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.loadgen import LoadConfig
from predlat.serving.loadgen import run as run_load
from predlat.serving.server import BackgroundServer

DEADLINE_S = 0.5  # generous: the machine is shared, this checks plumbing, not speed


def start_stack(
    max_queue: int = 1000, hosted: bool = False
) -> tuple[BackgroundServer, Runtime, ModelSpec]:
    """`hosted`: the app starts the runtime on the server's event loop (and stops it);
    else the runtime runs on its own control thread, started (and stopped) by the caller."""
    spec = resolve_model("tiny")
    runtime, _ = build_runtime(
        ["tiny"], slots=2, policy="predlat", max_queue=max_queue, progress=False
    )
    app = create_app(runtime, [spec], ServerConfig({"tiny": DEADLINE_S}))
    if not hosted:
        runtime.start()
    return BackgroundServer(app).start(), runtime, spec


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[BackgroundServer, Runtime, ModelSpec]]:
    server, runtime, spec = start_stack()
    yield server, runtime, spec
    server.stop()
    runtime.stop(drain=True)


def reference(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def counters(url: str) -> dict[str, float]:
    """Sum of every sample of each metric name (labels summed over)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    return sums


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_matches_onnxruntime(stack, binary: bool):
    server, _, spec = stack
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    client = triton.InferenceServerClient(url=server.address)
    try:
        inp = triton.InferInput("x", [3, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("y", binary_data=binary)
        result = client.infer("tiny", [inp], outputs=[out], priority=1)
        np.testing.assert_allclose(result.as_numpy("y"), reference(spec, x), rtol=1e-5, atol=1e-6)
        params = result.get_response()["parameters"]
        assert params["predlat_status"] in ("met", "missed")
        assert params["predlat_priority"] == "high"
        assert params["predlat_batch_size"] >= 3
    finally:
        client.close()


def test_burst_from_20_threads_none_lost_and_metrics_match(stack):
    server, runtime, spec = stack
    before_stats = runtime.stats()
    before = counters(server.url)  # (a labelled counter has no sample before its first)
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(200)]

    def worker(thread: int) -> list[tuple[int, int, bool]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(thread, 200, 20):
                body, headers = protocol.encode_infer_request({"x": xs[i]}, request_id=str(i))
                r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
                correct = False
                if r.status_code == 200:
                    doc, arrays = protocol.decode_infer_response(
                        r.content, int(r.headers[protocol.HEADER_LENGTH])
                    )
                    assert doc["id"] == str(i)
                    correct = np.allclose(arrays["y"], reference(spec, xs[i]), rtol=1e-5, atol=1e-6)
                answers.append((i, r.status_code, correct))
        return answers

    with ThreadPoolExecutor(20) as pool:
        answers = [a for chunk in pool.map(worker, range(20)) for a in chunk]
    assert sorted(i for i, _, _ in answers) == list(range(200))  # each answered once
    ok = [a for a in answers if a[1] == 200]
    assert all(correct for _, _, correct in ok)  # each got its own rows back
    assert {code for _, code, _ in answers} <= {200, 429, 503}
    assert len(ok) >= 180  # a 500 ms deadline for a sub-ms model: refusals are rare
    after_stats = runtime.stats()
    after = counters(server.url)
    answered = sum(
        getattr(after_stats, k) - getattr(before_stats, k)
        for k in ("met", "missed", "rejected", "failed")
    )
    assert after_stats.submitted - before_stats.submitted == 200
    assert answered == 200

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("predlat_requests_total") == 200
    # every row that ran was in exactly one batch
    assert grew("predlat_batch_size_sum") == len(ok)
    batches = after_stats.batches - before_stats.batches
    assert grew("predlat_batch_size_count") == batches
    assert grew("predlat_predictor_relative_error_count") == batches
    assert after["predlat_runtime_submitted"] == after_stats.submitted
    assert after["predlat_inflight_requests"] == 0


def test_unmeetable_deadline_is_refused_at_once_with_503(stack):
    server, _, _ = stack
    body = {
        "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
        "parameters": {"deadline_ms": 0.001},
    }
    started = time.perf_counter()
    response = httpx.post(server.url + "/v2/models/tiny/infer", json=body)
    assert response.status_code == 503
    assert "deadline" in response.json()["error"]  # refused at the door or by the scheduler
    assert time.perf_counter() - started < 1.0


def test_load_generator_on_the_real_runtime(stack):
    server, runtime, _ = stack
    before = runtime.stats()
    config = LoadConfig(url=server.url, rate=100, duration_s=1.0, hp_frac=0.2, seed=5)
    results = run_load(config, progress=False)
    after = runtime.stats()
    assert results["requests"] == after.submitted - before.submitted
    assert sum(results["status_codes"].values()) == results["requests"]
    assert "0" not in results["status_codes"]  # every request got an HTTP answer
    assert results["status_codes"].get("200", 0) == (after.met + after.missed) - (
        before.met + before.missed
    )
    assert results["by_priority"]["high"]["sent"] > 0


@pytest.mark.parametrize("hosted", [False, True], ids=["own-thread", "on-the-loop"])
def test_graceful_shutdown_drains_the_runtime(hosted: bool):
    server, runtime, _ = start_stack(hosted=hosted)
    x = np.zeros((1, 16), np.float32)
    body, headers = protocol.encode_infer_request({"x": x})

    def send(i: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
            return r.status_code, "" if r.status_code == 200 else r.json()["error"]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send, i) for i in range(64)]
        give_up = time.monotonic() + 10
        while runtime.stats().submitted < 16 and time.monotonic() < give_up:
            time.sleep(0.002)
        server.stop()  # returns once every request in flight got its answer
        runtime.stop(drain=True)  # (hosted: the app drained it already, a no-op)
        answers = []
        for f in futures:
            try:
                answers.append(f.result(timeout=30))
            except httpx.TransportError:
                answers.append((0, "connection refused"))  # sent after the listener closed
    stats = runtime.stats()
    assert stats.submitted >= 16
    assert stats.met + stats.missed + stats.rejected + stats.failed == stats.submitted
    codes = [code for code, _ in answers]
    assert codes.count(200) == stats.met + stats.missed  # everything that ran was answered
    refused = [error for code, error in answers if code == 503]
    assert all("shutting down" in error for error in refused)
    assert set(codes) <= {0, 200, 503}


def test_app_hosts_a_runtime_not_started_on_its_event_loop():
    server, runtime, spec = start_stack(hosted=True)
    threads: list[str] = []
    runtime.add_listener(lambda outcome: threads.append(threading.current_thread().name))
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(40)]

    def send(i: int) -> tuple[int, bool]:
        body, headers = protocol.encode_infer_request({"x": xs[i]})
        r = httpx.post(server.url + "/v2/models/tiny/infer", content=body, headers=headers)
        if r.status_code != 200:
            return r.status_code, False
        _, arrays = protocol.decode_infer_response(
            r.content, int(r.headers[protocol.HEADER_LENGTH])
        )
        return 200, bool(np.allclose(arrays["y"], reference(spec, xs[i]), rtol=1e-5, atol=1e-6))

    try:
        assert runtime.started
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(40)))
    finally:
        server.stop()  # the app drains and stops the runtime it started
    assert answers == [(200, True)] * 40
    assert threads == ["predlat-http"] * 40  # resolved on the server's event loop thread
    late = runtime.submit("tiny", None, deadline_s=1.0).result(timeout=0)
    assert (late.status, late.reason) == ("rejected", "shutting down")
    stats = runtime.stats()
    assert stats.submitted == 41 == stats.met + stats.missed + stats.rejected + stats.failed
    runtime.stop()  # the app stopped it: a no-op


@pytest.mark.slow
def test_serve_command_stops_cleanly_on_sigterm(stack):
    # `stack` built and cached the tiny profile, so the command starts in a few seconds.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "predlat",
            "serve",
            "--models",
            "tiny",
            "--port",
            "0",
            "--no-progress",
            "--default-deadline-ms",
            "tiny=300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        assert match, line
        url = match.group(0)
        assert "tiny 300 ms" in line
        assert httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
        assert httpx.post(url + "/v2/models/tiny/infer", json=body, timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopped on SIGTERM" in output


def test_runtime_counts_time_before_submit_against_the_deadline(stack):
    runtime = stack[1]
    x = {"x": np.zeros((1, 16), np.float32)}
    before = runtime.now()
    outcome = runtime.submit("tiny", x, deadline_s=0.5, waited_s=0.2).result(10)
    assert outcome.arrival <= before - 0.19  # arrived 0.2 s ago, as the server saw it
    assert outcome.deadline == pytest.approx(outcome.arrival + 0.5)
    late = runtime.submit("tiny", x, deadline_s=0.5, waited_s=0.6).result(10)
    assert late.status == "rejected"  # its deadline passed before it reached the runtime
