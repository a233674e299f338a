"""Triton model repositories: config.pbtxt parsed with Triton's schema, its settings in
effect, clear errors naming the field, and the repository API (index, load, unload)."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from conftest import build_matmul_model
from predlat.errors import ConfigError
from predlat.models.registry import resolve_model
from predlat.scheduling.request import Priority
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.repository import scan_repository
from predlat.serving.server import BackgroundServer
from serving_fakes import FakeRuntime

TINY_CONFIG = """
name: "small"
platform: "onnxruntime_onnx"
max_batch_size: 4
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 300000
    allow_timeout_override: false
    max_queue_size: 1
  }
}
instance_group { count: 2 kind: KIND_CPU }
"""
WIDE_CONFIG = """
max_batch_size: 8
instance_group [ { count: 1 } ]
"""


def make_repository(root: Path, small_config: str = TINY_CONFIG) -> Path:
    (root / "small" / "1").mkdir(parents=True)
    (root / "small" / "3").mkdir()  # the latest version is served
    shutil.copy(resolve_model("tiny").path, root / "small" / "3" / "model.onnx")
    (root / "small" / "config.pbtxt").write_text(small_config)
    (root / "wide" / "1").mkdir(parents=True)
    build_matmul_model(root / "wide" / "1" / "model.onnx", width=32, depth=2)
    (root / "wide" / "config.pbtxt").write_text(WIDE_CONFIG)
    return root


def test_two_models_and_their_settings(tmp_path):
    small, wide = scan_repository(make_repository(tmp_path))
    assert (small.name, small.version, wide.name) == ("small", "3", "wide")
    s = small.settings
    assert (s.max_batch_size, s.priority_levels, s.default_priority_level) == (4, 2, 2)
    assert (s.timeout_action, s.default_timeout_s, s.allow_timeout_override) == (
        "DELAY", 0.3, False
    )  # fmt: skip
    assert (s.max_queue_size, s.instance_count) == (1, 2)
    assert wide.settings.timeout_action == "REJECT" and wide.settings.allow_timeout_override
    assert small.spec().name == "small" and wide.spec().inputs[0].shape == (None, 32)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("max_bach_size: 4", 'no field named "max_bach_size"'),
        ("max_batch_size: many", "max_batch_size"),
        ("dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
         "default_priority_level"),
        ("sequence_batching { }", "'sequence_batching' is not supported"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan'"),
        ('name: "other"', "'name' is 'other'"),
    ],
)  # fmt: skip
def test_malformed_config_names_the_field(tmp_path, config, message):
    make_repository(tmp_path, config)
    with pytest.raises(ConfigError, match=r"config\.pbtxt") as info:
        scan_repository(tmp_path)
    assert message in str(info.value)


def test_ignored_fields_are_warned_about_by_name(tmp_path, caplog):
    make_repository(tmp_path, "max_batch_size: 2\nmodel_warmup { name: 'w' }")
    scan_repository(tmp_path)
    assert "'model_warmup' is ignored" in caplog.text


def serve(root: Path) -> tuple[BackgroundServer, FakeRuntime]:
    models = scan_repository(root)
    specs = [m.spec() for m in models]
    runtime = FakeRuntime(specs)
    config = ServerConfig(
        {"small": 0.5, "wide": 0.5},
        models={m.name: m.settings for m in models},
        repository=root,
        versions={m.name: m.version for m in models},
    )
    return BackgroundServer(create_app(runtime, specs, config)), runtime


def body(rows: int, width: int = 16, **params: object) -> dict:
    item = {"name": "x", "shape": [rows, width], "datatype": "FP32", "data": [0.0] * rows * width}
    return {"inputs": [item], "parameters": params}


def test_settings_take_effect(tmp_path):
    server, runtime = serve(make_repository(tmp_path))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        url = "/v2/models/small/infer"
        assert client.post(url, json=body(2, timeout=50_000, priority=1)).status_code == 200
        # the request's timeout is not allowed to override; priority 1 is high
        assert runtime.submitted[-1] == ("small", pytest.approx(0.3), Priority.HIGH)
        assert client.post(url, json=body(2)).status_code == 200
        assert runtime.submitted[-1][2] == Priority.LOW  # default_priority_level 2
        too_big = client.post(url, json=body(5))
        assert too_big.status_code == 400 and "max_batch_size 4" in too_big.json()["error"]
        bad_level = client.post(url, json=body(1, priority=3))
        assert bad_level.status_code == 400 and "priority_levels" in bad_level.json()["error"]
        runtime.hold.set()  # max_queue_size 1: a second request waits at the door
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, url, json=body(1))
            until = time.monotonic() + 5
            while len(runtime.submitted) < 3 and time.monotonic() < until:
                time.sleep(0.005)
            full = client.post(url, json=body(1))
            runtime.hold.clear()
            assert first.result().status_code == 200
        assert full.status_code == 429 and full.json()["reason"] == "model_queue_full"
        assert client.get("/v2/models/small/versions/3").json()["versions"] == ["3"]
        assert client.get("/v2/models/small/versions/1").status_code == 404
    runtime.stop()


def test_repository_index_load_unload_keep_other_models_serving(tmp_path):
    server, runtime = serve(make_repository(tmp_path))
    with server:
        client = triton.InferenceServerClient(server.address)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["small"]["state"] == "READY" and index["small"]["version"] == "3"
        runtime.hold.set()  # a request for 'wide' is in flight during the unload
        x = np.zeros((1, 32), np.float32)
        item = triton.InferInput("x", [1, 32], "FP32")
        item.set_data_from_numpy(x)
        with ThreadPoolExecutor(1) as pool:
            url = server.url + "/v2/models/wide/infer"
            pending = pool.submit(httpx.post, url, json=body(1, width=32), timeout=10)
            until = time.monotonic() + 5
            while not runtime.submitted and time.monotonic() < until:
                time.sleep(0.005)
            client.unload_model("wide")
            threading.Timer(0.05, runtime.hold.clear).start()
            assert pending.result().status_code == 200  # in flight: finished
        assert not client.is_model_ready("wide")
        with pytest.raises(triton.InferenceServerException, match="unloaded"):
            client.infer("wide", [item])
        assert client.is_model_ready("small")
        client.load_model("wide")
        assert client.infer("wide", [item]).as_numpy("y").shape == (1, 32)
        with pytest.raises(triton.InferenceServerException, match="restart"):
            client.load_model("absent")
    runtime.stop()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('max_batch_size: 4 input [{name: "z" data_type: TYPE_FP32 dims: [16]}]',
         "input 'z' is not in the model (inputs: x)"),
        ('max_batch_size: 4 input [{name: "x" data_type: TYPE_INT64 dims: [16]}]',
         "input 'x': data_type TYPE_INT64, the model's is TYPE_FP32"),
        ('max_batch_size: 4 input [{name: "x" data_type: TYPE_FP32 dims: [3]}]',
         "input 'x': dims [3] do not match the model's [16]"),
        ('max_batch_size: 0 input [{name: "x" data_type: TYPE_FP32 dims: [16]}]',
         "input 'x': dims [16] do not match the model's [-1, 16]"),
        ('max_batch_size: 4 output [{name: "nope" data_type: TYPE_FP32 dims: [4]}]',
         "output 'nope' is not in the model"),
    ],
)  # fmt: skip
def test_a_config_that_does_not_match_its_model_is_refused(tmp_path, config, message):
    small, _ = scan_repository(make_repository(tmp_path, config))
    with pytest.raises(ConfigError, match=r"small/config\.pbtxt") as info:
        small.spec()
    assert message in str(info.value)


def test_a_matching_config_signature_is_accepted(tmp_path):
    config = 'max_batch_size: 4 input [{name: "x" data_type: TYPE_FP32 dims: [-1]}]'
    small, _ = scan_repository(make_repository(tmp_path, config))
    assert small.spec().inputs[0].shape == (None, 16)


def test_a_bad_config_at_runtime_load_is_a_400_and_the_model_keeps_serving(tmp_path):
    root = make_repository(tmp_path, "max_batch_size: 4")
    server, runtime = serve(root)
    with server:
        load = server.url + "/v2/repository/models/small/load"
        infer = server.url + "/v2/models/small/infer"
        for text in (b"\xff\xfe not text", b'input [{name: "z" data_type: TYPE_FP32}]'):
            (root / "small" / "config.pbtxt").write_bytes(text)
            answer = httpx.post(load, timeout=10)
            assert answer.status_code == 400 and "small/config.pbtxt" in answer.json()["error"]
            assert httpx.post(infer, json=body(1), timeout=10).status_code == 200
    runtime.stop()


def test_load_overrides_are_refused_not_ignored(tmp_path):
    server, runtime = serve(make_repository(tmp_path))
    with server:
        client = triton.InferenceServerClient(server.address)
        with pytest.raises(triton.InferenceServerException, match=r"load parameters \(config\)"):
            client.load_model("small", config='{"max_batch_size": 1}')
        url = server.url + "/v2/repository/models/small/load"
        assert httpx.post(url, content=b"garbage", timeout=10).status_code == 400
        client.load_model("small")  # no overrides: loads
        assert client.is_model_ready("small")
    runtime.stop()
