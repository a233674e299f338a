"""The ONNX Runtime device: real execution, concurrency across slots, errors contained."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from predlat.devices import BatchJob, Device, OrtDevice, OrtDeviceConfig, SlotBusyError
from predlat.errors import ConfigError
from predlat.models import load_model_spec


@pytest.fixture()
def device(matmul_model_path):
    dev = OrtDevice(OrtDeviceConfig(num_slots=2, intra_op_threads=1))
    dev.load(load_model_spec(matmul_model_path, name="mm"))
    yield dev
    dev.close()


def test_is_a_device(device):
    assert isinstance(device, Device)
    assert device.num_slots == 2


def test_runs_given_inputs_and_matches_shapes(device):
    x = np.ones((3, 512), dtype=np.float32)
    result = device.run_sync(0, BatchJob(1, "mm", 3, inputs={"x": x}))
    assert result.error is None
    assert result.outputs["y"].shape == (3, 512)
    assert result.end > result.start


def _run_pair(device, batch_size):
    results, done = [], threading.Event()

    def on_done(result):
        results.append(result)
        if len(results) == 2:
            done.set()

    device.submit(0, BatchJob(1, "mm", batch_size), on_done)
    device.submit(1, BatchJob(2, "mm", batch_size), on_done)
    assert done.wait(30)
    return sorted(results, key=lambda r: r.slot)


def test_two_slots_run_concurrently(device):
    # Batches of ~10 ms each: long enough that OS scheduling jitter on a busy machine
    # cannot serialise them every time. A few attempts; one clear overlap proves it.
    for slot in (0, 1):
        device.run_sync(slot, BatchJob(0, "mm", 256))
    overlaps = []
    for _ in range(5):
        a, b = _run_pair(device, 256)
        assert (a.slot, b.slot) == (0, 1)
        overlaps.append(min(a.end, b.end) - max(a.start, b.start))
        if overlaps[-1] > 0.25 * min(a.latency, b.latency):
            return
    pytest.fail(f"batches on two slots never overlapped substantially: {overlaps}")


def test_busy_slot_is_refused(device):
    gate = threading.Event()
    device.submit(0, BatchJob(1, "mm", 256), lambda r: gate.set())
    with pytest.raises(SlotBusyError):
        device.submit(0, BatchJob(2, "mm", 1), lambda r: None)
    assert gate.wait(30)


def test_bad_batch_reports_error_and_slot_survives(device):
    bad = {"x": np.ones((2, 7), dtype=np.float32)}  # wrong feature width
    result = device.run_sync(0, BatchJob(1, "mm", 2, inputs=bad))
    assert result.error and result.outputs is None
    ok = device.run_sync(0, BatchJob(2, "mm", 2))
    assert ok.error is None


def test_unknown_model_is_an_error_result(device):
    result = device.run_sync(1, BatchJob(1, "nope", 1))
    assert "not loaded" in result.error


@pytest.mark.parametrize(
    "config",
    [
        OrtDeviceConfig(num_slots=0),
        OrtDeviceConfig(intra_op_threads=0),
        OrtDeviceConfig(provider="NoSuchExecutionProvider"),
    ],
)
def test_nonsense_config_is_refused(config):
    with pytest.raises(ConfigError):
        OrtDevice(config)
