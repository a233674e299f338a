"""This machine's peaks per slot, measured through the engine that runs the models.

Resource features are achieved throughput relative to these peaks, so they are measured
the way predlat runs models: an ONNX Runtime session with the slot's intra-op thread
count (on the device's provider), or the same two kernels in torch for a torch device.
Two micro-benchmarks, best of several runs each (the best run is the one least disturbed
by anything else on the machine):

- GEMM: one float32 MatMul (512 x 512 x 512 on CPU), 2*M*K*N flops / time.
- Memory: one float32 scale (y = 2 * x) over 64 MB, bytes read + written / time,
  a STREAM "scale"-like kernel whose arrays are far larger than any cache.

Inputs and outputs are bound once (I/O binding), so neither allocation nor copies back
to Python are timed. Together they take well under a few seconds.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from predlat.devices.base import DeviceInfo

_CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class PeakConfig:
    gemm_size: int = 512
    gemm_runs: int = 20
    mem_mbytes: int = 64
    mem_runs: int = 10
    max_seconds: float = 1.5  # per benchmark: stop repeating once this is spent


def cpu_model_name() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux, else platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    return os.cpu_count() or 1


def measure_peaks(
    intra_op_threads: int = 1,
    device: DeviceInfo | None = None,
    config: PeakConfig | None = None,
) -> dict[str, float]:
    """{"gemm_gflops_per_s": .., "mem_gbytes_per_s": ..} for one slot of `intra_op_threads`
    of `device` (None: ONNX Runtime on the CPU)."""
    config = config or PeakConfig()
    accelerator = device is not None and device.accelerator
    gemm_size = max(config.gemm_size, 4096) if accelerator else config.gemm_size
    mem_elems = config.mem_mbytes * (1 << 20) // 4 * (16 if accelerator else 1)
    if device is not None and device.kind == "torch":
        return _torch_peaks(intra_op_threads, accelerator, gemm_size, mem_elems, config)
    provider = device.detail if device is not None and device.kind == "onnxruntime" else None
    provider = provider or _CPU_PROVIDER
    return _ort_peaks(intra_op_threads, provider, accelerator, gemm_size, mem_elems, config)


def _ort_peaks(
    intra_op_threads: int,
    provider: str,
    accelerator: bool,
    gemm_size: int,
    mem_elems: int,
    config: PeakConfig,
) -> dict[str, float]:
    device = "cuda" if accelerator else "cpu"
    gemm_model = _single_op_model("MatMul", [gemm_size, gemm_size], two_inputs=True)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((gemm_size, gemm_size), dtype=np.float32)
    gemm_s = _best_time(
        gemm_model,
        {"x": a, "y": a},
        (gemm_size, gemm_size),
        intra_op_threads,
        provider,
        device,
        config.gemm_runs,
        config.max_seconds,
    )
    mem_model = _single_op_model("Mul", [mem_elems], two_inputs=False)
    x = np.ones(mem_elems, dtype=np.float32)
    mem_s = _best_time(
        mem_model,
        {"x": x},
        (mem_elems,),
        intra_op_threads,
        provider,
        device,
        config.mem_runs,
        config.max_seconds,
    )
    return {
        "gemm_gflops_per_s": 2.0 * gemm_size**3 / gemm_s / 1e9,
        "mem_gbytes_per_s": 2.0 * 4 * mem_elems / mem_s / 1e9,
    }


def _single_op_model(op: str, shape: list[int], two_inputs: bool) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    inputs = [x]
    initializers = []
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, shape))
    else:
        initializers.append(helper.make_tensor("y", TensorProto.FLOAT, [], [2.0]))
    node = helper.make_node(op, ["x", "y"], ["out"])
    graph = helper.make_graph([node], f"peak_{op.lower()}", inputs, [out], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime predlat supports
    return model.SerializeToString()


def _best_time(
    model: bytes,
    feeds: dict[str, np.ndarray],
    out_shape: tuple[int, ...],
    threads: int,
    provider: str,
    device: str,
    runs: int,
    max_seconds: float,
) -> float:
    import onnxruntime as ort  # here: torch devices measure without it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=options, providers=[provider])
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    output = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, device, 0)
    binding.bind_ortvalue_output("out", output)
    return _best_of(lambda: session.run_with_iobinding(binding), runs, max_seconds)


def _best_of(call: Callable[[], object], runs: int, max_seconds: float) -> float:
    call()  # warm-up: first-touch page faults, lazy kernel set-up
    best = float("inf")
    deadline = time.perf_counter() + max_seconds
    for _ in range(runs):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return best


def _torch_peaks(
    threads: int, cuda: bool, gemm_size: int, mem_elems: int, config: PeakConfig
) -> dict[str, float]:
    """The same two kernels in torch, on the GPU (timed with a synchronize after each
    run) or on `threads` CPU threads."""
    import torch

    target = "cuda" if cuda else "cpu"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(gemm_size, gemm_size, device=target)
        out = torch.empty_like(a)
        x = torch.ones(mem_elems, device=target)
        y = torch.empty_like(x)

        def timed(call: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                call()
                if cuda:
                    torch.cuda.synchronize()

            return run

        gemm_s = _best_of(
            timed(lambda: torch.mm(a, a, out=out)), config.gemm_runs, config.max_seconds
        )
        mem_s = _best_of(
            timed(lambda: torch.mul(x, 2.0, out=y)), config.mem_runs, config.max_seconds
        )
    finally:
        torch.set_num_threads(previous)
    return {
        "gemm_gflops_per_s": 2.0 * gemm_size**3 / gemm_s / 1e9,
        "mem_gbytes_per_s": 2.0 * 4 * mem_elems / mem_s / 1e9,
    }
