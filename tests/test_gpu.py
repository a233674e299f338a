"""The CUDA path: only where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from predlat.devices import BatchJob, OrtDevice, OrtDeviceConfig
from predlat.models import load_model_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu with a CUDA device",
    ),
]


def test_cuda_device_matches_cpu(matmul_model_path):
    spec = load_model_spec(matmul_model_path, name="mm")
    x = {"x": np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)}
    outputs = {}
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        device = OrtDevice(OrtDeviceConfig(num_slots=2, provider=provider))
        device.load(spec)
        result = device.run_sync(1, BatchJob(1, "mm", 4, inputs=x))
        device.close()
        assert result.error is None
        outputs[provider] = result.outputs["y"]
    np.testing.assert_allclose(
        outputs["CPUExecutionProvider"], outputs["CUDAExecutionProvider"], rtol=1e-3, atol=1e-3
    )
