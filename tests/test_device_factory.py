"""Devices by name: the factory, their descriptions, the regime, and what reads them."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from predlat.devices import (
    PHASES,
    BatchJob,
    BatchResult,
    Device,
    DeviceInfo,
    device_names,
    make_device,
)
from predlat.devices.onnxruntime_device import OrtDevice
from predlat.devices.simulated import SimulatedDevice
from predlat.errors import ConfigError
from predlat.profiling.peaks import cpu_model_name
from predlat.profiling.profiler import MachineId
from predlat.traces.records import BatchRecord
from predlat.traces.trace_file import read_trace, write_trace


def test_importing_the_factory_imports_no_engine():
    code = (
        "import sys; from predlat.devices import make_device; "
        "print(any(m in sys.modules for m in ('onnxruntime', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("onnxruntime", "CPUExecutionProvider"),
        ("ort", "CPUExecutionProvider"),
        ("ORT-cpu", "CPUExecutionProvider"),
        ("CPUExecutionProvider", "CPUExecutionProvider"),  # the deprecated --provider value
    ],
)
def test_onnxruntime_names(name, provider):
    device = make_device(name, slots=3, threads=1)
    try:
        assert isinstance(device, OrtDevice) and isinstance(device, Device)
        info = device.describe()
        assert info == DeviceInfo("onnxruntime", False, info.cores, 1, 3, provider)
        assert info.cores >= 1
    finally:
        device.close()


def test_onnxruntime_cuda_needs_its_provider():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        make_device("onnxruntime-cuda")
    with pytest.raises(ConfigError, match="variant"):
        make_device("ort-warp")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        make_device("tpu")
    message = str(err.value)
    assert "'tpu'" in message
    for name in ("onnxruntime", "ort", "torch", "simulated"):
        assert name in message
    assert set(device_names()) >= {"onnxruntime", "ort", "torch", "simulated", "sim"}


@pytest.mark.parametrize(("slots", "threads"), [(0, 1), (1, 0)])
def test_bad_sizes(slots, threads):
    with pytest.raises(ConfigError):
        make_device("onnxruntime", slots=slots, threads=threads)


def test_simulated_by_name_needs_its_cost_model():
    with pytest.raises(ConfigError, match="cost"):
        make_device("simulated", slots=2)
    device = make_device("sim", slots=2, cost=lambda model, n: (0.01 * n, 0.5, 0.5))
    assert isinstance(device, SimulatedDevice)
    device.load("m")
    result = device.run_sync(1, BatchJob(0, "m", 2))  # moves the virtual clock to its end
    assert result.error is None and result.slot == 1
    assert device.now() == pytest.approx(result.end) and result.latency > 0
    assert device.describe().regime == "accelerator"


@pytest.mark.parametrize(
    ("accelerator", "slots", "threads", "cores", "regime"),
    [
        (False, 2, 1, 2, "spatial"),
        (False, 2, 2, 4, "spatial"),
        (False, 3, 1, 2, "oversubscribed"),
        (False, 2, 2, 3, "oversubscribed"),
        (True, 16, 4, 2, "accelerator"),
    ],
)
def test_regime(accelerator, slots, threads, cores, regime):
    assert DeviceInfo("x", accelerator, cores, threads, slots).regime == regime


def test_profile_cache_key_unchanged_for_onnxruntime_cpu():
    """Profiles cached before devices described themselves keep their file names."""
    device = make_device("onnxruntime", slots=1, threads=2)
    info = device.describe()
    device.close()
    machine = MachineId.current(info)
    cpu, cores = cpu_model_name(), info.cores
    text = f"{cpu}|{cores}|CPUExecutionProvider|2|1"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    assert machine.key.endswith(f"-{cores}c-cpu-t2-{digest}")
    assert not machine.accelerator


def test_phases_travel_from_result_to_trace_file(tmp_path):
    phases = dict(zip(PHASES, (0.1, 0.3, 0.05), strict=True))
    timed = BatchResult(1, "m", 2, 0, 1.0, 1.5, extra=phases)
    untimed = BatchResult(2, "m", 2, 1, 1.2, 1.4)
    records = [BatchRecord.from_result(timed, 0.9), BatchRecord.from_result(untimed, 1.1)]
    assert records[0].phases == (0.1, 0.3, 0.05) and records[1].phases is None
    back = read_trace(write_trace(tmp_path / "t.parquet", records)).records
    assert [r.phases for r in back] == [(0.1, 0.3, 0.05), None]
    plain = read_trace(write_trace(tmp_path / "p.parquet", records[1:])).records
    assert plain[0].phases is None
