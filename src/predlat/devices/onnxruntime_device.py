"""A real device: ONNX Runtime sessions driven by one worker thread per slot.

ONNX Runtime releases the GIL inside `InferenceSession.run`, so slots really run side by
side. Each slot has its own session per model (and so its own intra-op thread pool, and
on CUDA its own stream), which is what makes co-located batches interfere the way
separately launched jobs do, rather than queueing behind one shared pool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from predlat.devices.base import BatchJob, BatchResult, DeviceInfo, error_message, host_cores
from predlat.devices.slots import SlotDevice, SlotWorker
from predlat.errors import ConfigError, ModelLoadError
from predlat.models.spec import ModelSpec

# Providers that compute on an accelerator (the only place that reads provider names).
_ACCELERATOR_PROVIDERS = ("CUDA", "Tensorrt", "ROCM", "MIGraphX", "Dml", "CoreML", "QNN", "Nnapi")


@dataclass(frozen=True)
class OrtDeviceConfig:
    num_slots: int = 2
    intra_op_threads: int = 1
    provider: str = "CPUExecutionProvider"

    def validate(self) -> None:
        if self.num_slots < 1:
            raise ConfigError(f"slots must be at least 1, got {self.num_slots}")
        if self.intra_op_threads < 1:
            raise ConfigError(f"intra-op threads must be at least 1, got {self.intra_op_threads}")
        available = ort.get_available_providers()
        if self.provider not in available:
            raise ConfigError(
                f"execution provider {self.provider} is not available "
                f"(this onnxruntime has: {', '.join(available)})"
            )


class _Slot(SlotWorker):
    """One worker thread that runs the batches given to its slot, one at a time."""

    def __init__(self, index: int, device: OrtDevice) -> None:
        super().__init__(index, f"predlat-slot-{index}")
        self.device = device
        self.start()

    def run(self, job: BatchJob) -> BatchResult:
        return self.device.execute(self.index, job)


class OrtDevice(SlotDevice):
    """ONNX Runtime on CPU (or CUDA / TensorRT with onnxruntime-gpu), K slots."""

    def __init__(self, config: OrtDeviceConfig | None = None) -> None:
        self.config = config or OrtDeviceConfig()
        self.config.validate()
        self.num_slots = self.config.num_slots
        self.name = f"ort-{self.config.provider.removesuffix('ExecutionProvider').lower()}"
        self._specs: dict[str, ModelSpec] = {}
        self._sessions: dict[tuple[int, str], ort.InferenceSession] = {}
        self._random_feeds: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._slots = [_Slot(i, self) for i in range(self.num_slots)]

    # -- Device protocol -------------------------------------------------------------
    def load(self, spec: ModelSpec) -> None:
        if spec.name in self._specs:
            return
        for slot in range(self.num_slots):
            self._sessions[(slot, spec.name)] = self._new_session(spec)
        self._specs[spec.name] = spec

    def describe(self) -> DeviceInfo:
        provider = self.config.provider
        return DeviceInfo(
            kind="onnxruntime",
            accelerator=provider.startswith(_ACCELERATOR_PROVIDERS),
            cores=host_cores(),
            threads_per_slot=self.config.intra_op_threads,
            num_slots=self.num_slots,
            detail=provider,
        )

    def close(self) -> None:
        self._stop_workers()
        # Release the sessions now (hundreds of MB with the zoo) rather than whenever the
        # device object is collected.
        with self._lock:
            self._sessions.clear()
            self._random_feeds.clear()
            self._specs.clear()

    # -- helpers ---------------------------------------------------------------------
    def is_busy(self, slot: int) -> bool:
        return self._slots[slot].busy

    def spec(self, model: str) -> ModelSpec:
        return self._specs[model]

    def execute(self, slot: int, job: BatchJob) -> BatchResult:
        """Run a batch on the calling thread; times taken right around the engine call."""
        session = self._sessions.get((slot, job.model))
        if session is None:
            return self._failed(slot, job, f"model '{job.model}' is not loaded on this device")
        feeds = job.inputs if job.inputs is not None else self._feeds(job.model, job.batch_size)
        start = time.perf_counter()
        try:
            outputs = session.run(None, feeds)
        except Exception as exc:  # a bad batch must not kill the slot's thread
            end = time.perf_counter()
            message = error_message(exc)
            return BatchResult(
                job.batch_id, job.model, job.batch_size, slot, start, end, error=message
            )
        end = time.perf_counter()
        names = [o.name for o in session.get_outputs()]
        return BatchResult(
            job.batch_id,
            job.model,
            job.batch_size,
            slot,
            start,
            end,
            outputs=dict(zip(names, outputs, strict=True)),
        )

    def _failed(self, slot: int, job: BatchJob, message: str) -> BatchResult:
        now = time.perf_counter()
        return BatchResult(job.batch_id, job.model, job.batch_size, slot, now, now, error=message)

    def _feeds(self, model: str, batch_size: int) -> dict[str, np.ndarray]:
        key = (model, batch_size)
        feeds = self._random_feeds.get(key)
        if feeds is None:
            rng = np.random.default_rng(batch_size)
            feeds = self._specs[model].random_inputs(batch_size, rng)
            self._random_feeds[key] = feeds
        return feeds

    def _new_session(self, spec: ModelSpec) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning workers burn a core while idle; with several slots that would be
        # interference predlat caused itself rather than the co-runners' real work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        path = spec.onnx_path  # a .pt2 or full-size model: "runs only with --device torch"
        try:
            return ort.InferenceSession(
                str(path), sess_options=options, providers=[self.config.provider]
            )
        except Exception as exc:
            reason = error_message(exc)
            raise ModelLoadError(path, f"ONNX Runtime cannot load it: {reason}") from None


# Variants of the device name (`onnxruntime-cuda`) and the provider each means.
VARIANT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}


def make(
    slots: int, threads: int, variant: str | None = None, provider: str | None = None
) -> OrtDevice:
    """The factory's constructor: `variant` names a provider (cpu by default), or
    `provider` gives one outright."""
    if provider is None:
        if variant is not None and variant not in VARIANT_PROVIDERS:
            raise ConfigError(
                f"unknown onnxruntime variant '{variant}' (known: {', '.join(VARIANT_PROVIDERS)})"
            )
        provider = VARIANT_PROVIDERS[variant or "cpu"]
    return OrtDevice(OrtDeviceConfig(slots, threads, provider))
