"""The open-loop load generator against a real HTTP server with a fake runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest

from predlat.cli import main
from predlat.errors import ConfigError, PredlatError
from predlat.models.registry import resolve_model
from predlat.scheduling.request import Priority
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.http_client import RawHttpClient, encode_request
from predlat.serving.loadgen import LoadConfig, random_inputs, run
from predlat.serving.server import BackgroundServer
from predlat.workload.arrivals import open_loop_workload
from serving_fakes import FakeRuntime


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[BackgroundServer, FakeRuntime]]:
    spec = resolve_model("tiny")
    runtime = FakeRuntime([spec])
    app = create_app(runtime, [spec], ServerConfig({"tiny": 1.0}))
    with BackgroundServer(app) as server:
        yield server, runtime
    runtime.stop()


@pytest.fixture
def server(served) -> Iterator[BackgroundServer]:
    yield served[0]
    served[1].gate = None


@pytest.fixture
def runtime(served) -> FakeRuntime:
    return served[1]


def test_every_arrival_is_sent_once_and_reported(server, runtime):
    before = len(runtime.outcomes)
    config = LoadConfig(url=server.url, rate=100, duration_s=1.0, hp_frac=0.5, seed=3)
    results = run(config, progress=False)
    expected = open_loop_workload({"tiny": 100}, 1.0, 3, "poisson", 0.5)
    high = sum(a.high_priority for a in expected)
    assert results["requests"] == len(expected) == len(runtime.outcomes) - before
    assert results["status_codes"] == {"200": len(expected)}
    assert results["by_priority"]["high"]["sent"] == high
    assert results["by_priority"]["low"]["sent"] == len(expected) - high
    for group in results["by_priority"].values():
        assert group["ok"] == group["met"] == group["sent"]
        assert group["deadline_satisfaction_server"] == 1.0
        assert group["deadline_satisfaction_client"] == 1.0
    assert results["latency_ms"]["p50"] <= results["latency_ms"]["p99"]
    assert results["server_overhead_ms"]["p50"] is not None
    assert results["achieved_rate_rps"] > 0
    assert results["models"] == ["tiny"]
    submitted = runtime.submitted[before:]
    assert sum(p == Priority.HIGH for _, _, p in submitted) == high
    json.dumps(results)  # results.json material


def test_refusals_are_counted_by_status_and_reason(server, runtime):
    runtime.gate = lambda model, inputs, deadline, priority: (
        "queue full (9 requests queued)" if priority == Priority.HIGH else None
    )
    config = LoadConfig(
        url=server.url, rate=80, duration_s=0.5, hp_frac=0.5, seed=1, deadline_ms=250
    )
    results = run(config, progress=False)
    high = results["by_priority"]["high"]
    assert high["sent"] > 0 and high["ok"] == 0
    assert high["deadline_satisfaction_server"] == 0.0
    assert results["status_codes"]["429"] == high["sent"]
    assert results["errors"] == {"queue full (9 requests queued)": high["sent"]}
    assert results["by_priority"]["low"]["deadline_satisfaction_client"] == 1.0
    # the scheduler plans to end early by the response path's measured time
    assert all(0.2 < d <= 0.25 for _, d, _ in runtime.submitted[-5:])


def test_json_tensors_and_request_bound(server, runtime):
    before = len(runtime.outcomes)
    config = LoadConfig(url=server.url, rate=200, duration_s=5.0, binary=False, max_requests=25)
    results = run(config, progress=False)
    assert results["requests"] == 25 == len(runtime.outcomes) - before
    assert results["status_codes"] == {"200": 25}
    assert results["wall_s"] < 3.0  # stopped after 25 requests, not 5 s of arrivals


def test_models_not_served_and_unreachable_servers_are_user_errors(server):
    with pytest.raises(PredlatError, match="does not serve resnet"):
        run(LoadConfig(url=server.url, models=("resnet",), duration_s=0.1), progress=False)
    with pytest.raises(PredlatError, match="cannot reach"):
        run(LoadConfig(url="http://127.0.0.1:9", duration_s=0.1, timeout_s=1), progress=False)
    with pytest.raises(ConfigError):
        run(LoadConfig(url=server.url, rate=-1), progress=False)


def test_random_inputs_follow_metadata():
    meta = {
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "img", "datatype": "FP16", "shape": [-1, 3, 8]},
        ]
    }
    feeds = random_inputs(meta, np.random.default_rng(0))
    assert feeds["ids"].shape == (1, 1) and feeds["ids"].dtype == np.int64
    assert feeds["img"].shape == (1, 3, 8) and feeds["img"].dtype == np.float16
    with pytest.raises(PredlatError, match="BYTES"):
        random_inputs(
            {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1]}]},
            np.random.default_rng(0),
        )


def test_load_command_writes_results(server, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "load",
            "--url",
            server.url,
            "--rate",
            "60",
            "--duration",
            "0.5",
            "--hp-frac",
            "0.3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["rate"] == 60 and results["requests"] > 0
    printed = capsys.readouterr().out
    assert "deadline satisfaction" in printed and "status codes: 200" in printed


def test_load_command_rejects_bad_flags(capsys):
    assert main(["load", "--hp-frac", "1.5", "--no-progress"]) == 2
    assert "--hp-frac" in capsys.readouterr().err


def test_csv_replay_and_server_counts_agree(server, runtime, tmp_path):
    log = tmp_path / "log.csv"
    rows = ["timestamp,model,high_priority"]
    rows += [f"{1_700_000_000 + i * 0.01:.3f},tiny,{int(i % 4 == 0)}" for i in range(30)]
    log.write_text("\n".join(rows) + "\n")
    runtime.gate = lambda model, inputs, deadline, priority: (
        "deadline cannot be met: 1 ms left" if priority == Priority.HIGH else None
    )
    results = run(LoadConfig(url=server.url, replay=str(log)), progress=False)
    assert results["requests"] == 30 and results["wall_s"] < 3.0  # relative to the first
    assert results["status_codes"] == {"200": 22, "503": 8}
    counted = results["server"]
    assert counted["predlat_requests{met}"] == 22
    assert counted["predlat_requests{rejected}"] == 8  # answered + refused == sent
    assert results["refusal_latency_ms"]["p99"] is not None


def test_replay_of_models_not_served_is_a_user_error(server, tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("time,model\n0.0,resnet\n")
    with pytest.raises(PredlatError, match="not served: resnet"):
        run(LoadConfig(url=server.url, replay=str(log)), progress=False)


def test_client_timeout_is_reported_not_hung(server, runtime):
    runtime.hold.set()
    try:
        config = LoadConfig(url=server.url, rate=20, duration_s=0.2, timeout_s=0.3, seed=2)
        results = run(config, progress=False)
    finally:
        runtime.hold.clear()
    assert results["requests"] > 0
    assert results["status_codes"] == {"0": results["requests"]}
    assert all("TimeoutError" in e for e in results["errors"])


def test_raw_client_sends_at_once_on_an_idle_connection(server):
    async def scenario() -> tuple[object, int, int, bool]:
        client = RawHttpClient(server.url, max_connections=1)
        request = encode_request("GET", "/v2/health/live", "test")
        try:
            none_idle = client.send_now(request)  # nothing open yet: the task path opens one
            first = await client.send(request)
            answer = client.send_now(request)  # written before this returns
            assert answer is not None
            second = await answer
            return none_idle, first.status, second.status, client.send_now(request) is not None
        finally:
            client.close()

    none_idle, first, second, reused = asyncio.run(scenario())
    assert none_idle is None and first == second == 200 and reused
