"""A real device on PyTorch: K slots, each a worker thread (and on a GPU its own stream).

On CUDA a batch is one sequence on its slot's own (never the default) stream: start
event, host-to-device copy from pinned buffers, replay of the CUDA graph captured for
this (slot, model, batch size) at load, device-to-host copy into pinned buffers, end
event; the worker sleeps on the blocking end event. Without graphs Python's launch
overhead and the GIL would serialise the slots. Times come from the events, mapped to
the host clock through a per-slot anchor event renewed every few seconds (`elapsed_time`
is float32 ms). Copy-in, compute and copy-out are reported apart (`BatchResult.extra`):
copies contend on the PCIe link, an interference source of their own. On a CPU the same
class runs on its slot threads, phases timed with perf_counter, so CI tests it.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from predlat.devices.base import (
    PHASES,
    BatchJob,
    BatchResult,
    DeviceInfo,
    error_message,
    host_cores,
)
from predlat.devices.slots import SlotDevice, SlotWorker
from predlat.errors import ConfigError, ModelLoadError
from predlat.models.spec import ModelSpec

# spec -> an eval-mode float32 torch.nn.Module on CPU; forward takes the spec's inputs
# positionally and returns a tuple of tensors in the spec's output order.
ModuleLoader = Callable[[ModelSpec], Any]
GRAPH_BATCH_SIZES = tuple(range(1, 9))  # every size the scheduler picks by default
WARMUP_RUNS = 3
REANCHOR_S = 2.0


def make(slots: int, threads: int, variant: str | None = None, **opts: Any) -> TorchDevice:
    """The factory's constructor: `torch` (CUDA when available), `torch-cpu`, `torch-cuda`."""
    if variant not in (None, "cpu", "cuda"):
        raise ConfigError(f"unknown torch variant '{variant}' (known: cpu, cuda)")
    return TorchDevice(slots, threads, device=variant or "auto", **opts)


def default_module_loader(spec: ModelSpec) -> Any:
    from predlat.models.torch_load import torch_module_for

    return torch_module_for(spec)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError("the torch device needs PyTorch: pip install 'predlat[torch]'") from None
    return torch


@dataclass
class _State:
    """One (slot, model, batch size): the slot's own input buffers (pinned on CUDA), and on
    CUDA the device-side inputs, outputs and pinned output buffers, and the graph."""

    host_in: list[Any]
    host_out: list[Any] | None = None
    dev_in: list[Any] | None = None
    dev_out: list[Any] | None = None
    graph: Any = None


class _Slot(SlotWorker):
    """A worker thread running its slot's batches one at a time (and its CUDA stream)."""

    def __init__(self, index: int, device: TorchDevice) -> None:
        super().__init__(index, f"predlat-torch-{index}")
        self.device = device
        self.states: dict[tuple[str, int], _State] = {}
        torch, cuda = device.torch, device.cuda
        self.stream = torch.cuda.Stream(device=device.target) if cuda else None
        self.pool = torch.cuda.graph_pool_handle() if cuda else None
        if cuda:  # reused: a slot runs one batch at a time
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            self.events.append(torch.cuda.Event(enable_timing=True, blocking=True))
            self.anchor = torch.cuda.Event(enable_timing=True, blocking=True)
        self.anchor_host = -float("inf")
        self.anchored_at = -float("inf")
        self.start()

    def init(self) -> None:
        self.device.init_worker()

    def run(self, job: BatchJob) -> BatchResult:
        return self.device.execute(self, job)

    def host_time(self, event: Any) -> float:
        """An event's time on the host clock (perf_counter seconds)."""
        return self.anchor_host + self.anchor.elapsed_time(event) / 1e3

    def reanchor_if_stale(self) -> None:
        """Record the anchor on the idle stream and wait for it. Its GPU timestamp lies
        between the host times read before the record and after the wait; take the
        midpoint (an error of a few microseconds, the same for every batch until the next
        anchor)."""
        now = time.perf_counter()
        if now - self.anchored_at < REANCHOR_S:
            return
        before = time.perf_counter()
        self.anchor.record(self.stream)
        self.anchor.synchronize()
        after = time.perf_counter()
        self.anchor_host = (before + after) / 2
        self.anchored_at = after


class TorchDevice(SlotDevice):
    """PyTorch on a CUDA GPU (streams and graphs) or a CPU (threads), K slots."""

    def __init__(
        self,
        slots: int = 2,
        threads: int = 1,
        device: str = "auto",
        module_loader: ModuleLoader | None = None,
        graph_batch_sizes: Sequence[int] = GRAPH_BATCH_SIZES,
    ) -> None:
        torch = _import_torch()
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, got {slots}")
        if threads < 1:
            raise ConfigError(f"threads per slot must be at least 1, got {threads}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"torch device must be cpu, cuda or auto, got '{device}'")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"torch-cuda: this torch ({torch.__version__}) sees no CUDA device")
        self.torch = torch
        self.cuda = device == "cuda"
        self.target = torch.device("cuda", torch.cuda.current_device()) if self.cuda else None
        self.name = f"torch-{device}"
        self.num_slots = slots
        self.threads = threads
        self._loader = module_loader or default_module_loader
        self._graph_sizes = tuple(sorted(set(graph_batch_sizes)))
        self._specs: dict[str, ModelSpec] = {}
        self._modules: dict[str, Any] = {}  # one per model: slots only read the weights
        self._feeds: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._slots = [_Slot(i, self) for i in range(slots)]

    # -- Device protocol -------------------------------------------------------------
    def load(self, spec: ModelSpec) -> None:
        if spec.name in self._specs:
            return
        try:
            module = self._loader(spec).eval()
        except ConfigError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                spec.path or spec.name, f"cannot make a torch module of it: {exc}"
            ) from None
        if self.cuda:
            module = module.to(self.target)
        self._modules[spec.name] = module
        self._specs[spec.name] = spec
        if self.cuda:  # graphs are captured now, not on a batch's clock
            for slot in self._slots:
                for n in self._graph_sizes:
                    slot.states[(spec.name, n)] = self._prepare(slot, spec, n, capture=True)

    def describe(self) -> DeviceInfo:
        if self.cuda:
            detail = f"torch-cuda {self.torch.cuda.get_device_name(self.target)}"
        else:
            detail = "torch-cpu"
        return DeviceInfo("torch", self.cuda, host_cores(), self.threads, self.num_slots, detail)

    def close(self) -> None:
        self._stop_workers()
        with self._lock:
            for worker in self._slots:
                worker.states.clear()
            for table in (self._modules, self._specs, self._feeds):
                table.clear()
        if self.cuda:
            self.torch.cuda.synchronize(self.target)
            self.torch.cuda.empty_cache()

    # -- worker side -----------------------------------------------------------------
    def init_worker(self) -> None:
        """On the slot's own thread. torch's intra-op thread count looks process-wide, but
        with its OpenMP backend it is the calling thread's OpenMP setting, so
        `set_num_threads` here sizes this slot's pool only (K slots x `threads`, like ONNX
        Runtime's per-session pools). `get_num_threads` first runs torch's lazy per-thread
        init, which would otherwise reset it to the global counter on the first op."""
        torch = self.torch
        if self.cuda:
            torch.cuda.set_device(self.target)
            return
        torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def execute(self, slot: _Slot, job: BatchJob) -> BatchResult:
        """Run a batch on the calling (slot) thread; never raises."""
        spec = self._specs.get(job.model)
        if spec is None:
            return self._failed(slot, job, f"model '{job.model}' is not loaded on this device")
        try:
            feeds = job.inputs if job.inputs is not None else self._random(spec, job.batch_size)
            _check_feeds(spec, job.batch_size, feeds)
            state = slot.states.get((job.model, job.batch_size))
            if state is None:  # a size without a graph: buffers now, eager on CUDA
                state = self._prepare(slot, spec, job.batch_size, capture=False)
                slot.states[(job.model, job.batch_size)] = state
            run = self._run_cuda if self.cuda else self._run_cpu
            return run(slot, job, spec, state, feeds)
        except Exception as exc:  # a bad batch must not kill the slot's thread
            return self._failed(slot, job, error_message(exc))

    def _run_cpu(
        self, slot: _Slot, job: BatchJob, spec: ModelSpec, state: _State, feeds: dict
    ) -> BatchResult:
        start = time.perf_counter()
        for buffer, tensor in zip(state.host_in, spec.inputs, strict=True):
            buffer.numpy()[...] = feeds[tensor.name]
        copied = time.perf_counter()
        with self.torch.no_grad():
            outs = _as_tuple(self._modules[job.model](*state.host_in))
        computed = time.perf_counter()
        arrays = [o.detach().numpy().copy() for o in outs]
        end = time.perf_counter()
        phases = (copied - start, computed - copied, end - computed)
        return self._result(slot, job, spec, start, end, arrays, phases, graph=False)

    def _run_cuda(
        self, slot: _Slot, job: BatchJob, spec: ModelSpec, state: _State, feeds: dict
    ) -> BatchResult:
        torch = self.torch
        for buffer, tensor in zip(state.host_in, spec.inputs, strict=True):
            buffer.numpy()[...] = feeds[tensor.name]  # staging: host work, before the clock
        slot.reanchor_if_stale()
        start, copied, computed, end = slot.events
        with torch.cuda.stream(slot.stream), torch.no_grad():
            start.record(slot.stream)
            for dev, host in zip(state.dev_in, state.host_in, strict=True):
                dev.copy_(host, non_blocking=True)
            copied.record(slot.stream)
            if state.graph is not None:
                state.graph.replay()  # on the current stream: the slot's
                outs = state.dev_out
            else:
                outs = _as_tuple(self._modules[job.model](*state.dev_in))
            computed.record(slot.stream)
            for host, dev in zip(state.host_out, outs, strict=True):
                host.copy_(dev, non_blocking=True)
            end.record(slot.stream)
        end.synchronize()  # a blocking event: the worker sleeps, GIL released
        ms = (start.elapsed_time(copied), copied.elapsed_time(computed), computed.elapsed_time(end))
        arrays = [h.numpy().copy() for h in state.host_out]
        phases = tuple(m / 1e3 for m in ms)
        t0, t1 = slot.host_time(start), slot.host_time(end)
        return self._result(slot, job, spec, t0, t1, arrays, phases, state.graph is not None)

    def _result(
        self,
        slot: _Slot,
        job: BatchJob,
        spec: ModelSpec,
        start: float,
        end: float,
        arrays: list[np.ndarray],
        phases: Sequence[float],
        graph: bool,
    ) -> BatchResult:
        if len(arrays) != len(spec.outputs):
            message = f"the module gave {len(arrays)} outputs, the model has {len(spec.outputs)}"
            return replace(self._failed(slot, job, message), start=start, end=end)
        extra = dict(zip(PHASES, phases, strict=True))
        extra["graph"] = float(graph)
        outputs = {t.name: a for t, a in zip(spec.outputs, arrays, strict=True)}
        return BatchResult(
            job.batch_id, job.model, job.batch_size, slot.index, start, end, outputs, extra=extra
        )

    # -- buffers and graphs ------------------------------------------------------------
    def _prepare(self, slot: _Slot, spec: ModelSpec, n: int, capture: bool) -> _State:
        """The slot's buffers for (model, n); on CUDA warmed up on the slot's stream and,
        when `capture`, a graph (thread-local capture mode, so other slots' threads may
        keep running meanwhile). A capture that fails falls back to eager launches."""
        torch = self.torch
        feeds = self._random(spec, n)
        host_in = [torch.from_numpy(feeds[t.name].copy()) for t in spec.inputs]
        if not self.cuda:
            return _State(host_in)
        host_in = [t.pin_memory() for t in host_in]
        module = self._modules[spec.name]
        with torch.cuda.stream(slot.stream), torch.no_grad():
            dev_in = [h.to(self.target, non_blocking=True) for h in host_in]
            for _ in range(WARMUP_RUNS):
                outs = _as_tuple(module(*dev_in))
            slot.stream.synchronize()
            host_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs]
            state = _State(host_in, host_out, dev_in)
            if capture:
                state.graph, state.dev_out = self._capture(slot, spec, n, module, dev_in)
        return state

    def _capture(
        self, slot: _Slot, spec: ModelSpec, n: int, module: Any, dev_in: list
    ) -> tuple[Any, Any]:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        try:
            # One memory pool per slot: a slot replays one graph at a time, and each
            # replay's outputs are copied out (stream order) before the next replay.
            with torch.cuda.graph(
                graph, pool=slot.pool, stream=slot.stream, capture_error_mode="thread_local"
            ):
                outs = _as_tuple(module(*dev_in))
        except Exception as exc:
            warnings.warn(
                f"{spec.name} batch {n}: no CUDA graph ({error_message(exc)}); launching eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            slot.stream.synchronize()
            return None, None
        return graph, list(outs)

    def _random(self, spec: ModelSpec, n: int) -> dict[str, np.ndarray]:
        key = (spec.name, n)
        feeds = self._feeds.get(key)
        if feeds is None:
            feeds = spec.random_inputs(n, np.random.default_rng(n))
            self._feeds[key] = feeds
        return feeds

    def _failed(self, slot: _Slot, job: BatchJob, message: str) -> BatchResult:
        now = time.perf_counter()
        return BatchResult(
            job.batch_id, job.model, job.batch_size, slot.index, now, now, error=message
        )


def _check_feeds(spec: ModelSpec, n: int, feeds: dict[str, np.ndarray]) -> None:
    for tensor in spec.inputs:
        array = feeds.get(tensor.name)
        if array is None:
            raise ConfigError(f"input '{tensor.name}' is missing")
        want = tensor.sample_shape(n)
        if array.dtype != tensor.dtype or array.shape != want:
            raise ConfigError(
                f"input '{tensor.name}' is {array.dtype}{list(array.shape)}, "
                f"expected {tensor.dtype}{list(want)}"
            )


def _as_tuple(outputs: Any) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
