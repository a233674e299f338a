"""The torch device on a CPU (its shared logic) and, where CUDA exists, on a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from predlat.devices import BatchJob, Device, SlotBusyError, make_device  # noqa: E402
from predlat.devices.torch_device import PHASES, TorchDevice  # noqa: E402
from predlat.errors import ConfigError, ModelLoadError  # noqa: E402
from predlat.models import resolve_model  # noqa: E402


class TinyMlp(torch.nn.Module):
    """The `tiny` zoo model's signature: x [batch, 16] -> (y [batch, 4],)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )

    def forward(self, x):
        return (self.net(x),)


class Rendezvous(TinyMlp):
    """Blocks each forward until `parties` forwards are inside it at once: two slots can
    only both finish if they really run side by side."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.threads: list[int] = []

    def forward(self, x):
        self.threads.append(torch.get_num_threads())
        self.barrier.wait()
        return super().forward(x)


@pytest.fixture(scope="module")
def tiny():
    return resolve_model("tiny")


@pytest.fixture()
def mlp():
    return TinyMlp().eval()


@pytest.fixture()
def device(tiny, mlp):
    dev = TorchDevice(2, 1, device="cpu", module_loader=lambda spec: mlp)
    dev.load(tiny)
    yield dev
    dev.close()


def test_is_a_device_and_describes_itself(device):
    assert isinstance(device, Device)
    info = device.describe()
    assert (info.kind, info.accelerator, info.num_slots, info.threads_per_slot) == (
        "torch",
        False,
        2,
        1,
    )
    assert info.detail == "torch-cpu"


def test_outputs_match_the_module(device, mlp):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    result = device.run_sync(1, BatchJob(7, "tiny", 3, inputs={"x": x}))
    assert result.error is None, result.error
    assert (result.batch_id, result.slot) == (7, 1)
    with torch.no_grad():
        want = mlp(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-6)


def test_phases_are_recorded_and_fit_in_the_latency(device):
    result = device.run_sync(0, BatchJob(1, "tiny", 4))
    assert result.error is None
    phases = [result.extra[p] for p in PHASES]
    assert all(p >= 0 for p in phases)
    assert sum(phases) <= result.latency + 1e-9
    assert result.extra["graph"] == 0.0  # no graphs on a CPU


def test_slots_run_concurrently_with_their_own_thread_count(tiny):
    module = Rendezvous(parties=2).eval()
    dev = TorchDevice(2, 1, device="cpu", module_loader=lambda spec: module)
    dev.load(tiny)
    results, done = [], threading.Semaphore(0)

    def on_done(result):
        results.append(result)
        done.release()

    try:
        dev.submit(0, BatchJob(0, "tiny", 2), on_done)
        dev.submit(1, BatchJob(1, "tiny", 5), on_done)
        assert done.acquire(timeout=20) and done.acquire(timeout=20)
    finally:
        dev.close()
    assert sorted(r.slot for r in results) == [0, 1]
    assert all(r.error is None for r in results)
    assert {r.outputs["y"].shape for r in results} == {(2, 4), (5, 4)}
    assert module.threads == [1, 1]  # each slot's own intra-op thread count


def test_busy_slot_is_refused(tiny):
    module = Rendezvous(parties=2).eval()
    dev = TorchDevice(1, 1, device="cpu", module_loader=lambda spec: module)
    dev.load(tiny)
    finished = threading.Event()
    try:
        dev.submit(0, BatchJob(0, "tiny", 1), lambda r: finished.set())
        with pytest.raises(SlotBusyError):
            dev.submit(0, BatchJob(1, "tiny", 1), lambda r: None)
        module.barrier.wait()  # let the first batch through
        assert finished.wait(10)
    finally:
        dev.close()


def test_bad_batches_fail_alone(device):
    bad = {"x": np.ones((2, 3), dtype=np.float32)}
    result = device.run_sync(0, BatchJob(1, "tiny", 2, inputs=bad))
    assert result.error is not None and "'x'" in result.error
    missing = device.run_sync(0, BatchJob(2, "nope", 1))
    assert missing.error is not None and "not loaded" in missing.error
    assert device.run_sync(0, BatchJob(3, "tiny", 2)).error is None  # the slot survives


class TwoOutputs(TinyMlp):
    def forward(self, x):
        y = super().forward(x)[0]
        return y, y


def test_wrong_output_count_is_an_error(tiny):
    dev = TorchDevice(1, 1, device="cpu", module_loader=lambda spec: TwoOutputs())
    dev.load(tiny)
    try:
        result = dev.run_sync(0, BatchJob(0, "tiny", 1))
    finally:
        dev.close()
    assert result.error is not None and "2 outputs" in result.error


def test_loader_failure_names_the_model(tiny):
    def broken(spec):
        raise RuntimeError("unsupported op Foo")

    dev = TorchDevice(1, 1, device="cpu", module_loader=broken)
    try:
        with pytest.raises(ModelLoadError, match="unsupported op Foo"):
            dev.load(tiny)
    finally:
        dev.close()


def test_close_stops_the_workers(tiny, mlp):
    dev = TorchDevice(3, 1, device="cpu", module_loader=lambda spec: mlp)
    dev.load(tiny)
    dev.close()
    assert not any(t.name.startswith("predlat-torch") for t in threading.enumerate())


def test_factory_names(tiny, mlp):
    dev = make_device("torch-cpu", slots=2, threads=1, module_loader=lambda spec: mlp)
    try:
        assert isinstance(dev, TorchDevice) and dev.describe().regime in (
            "spatial",
            "oversubscribed",
        )
    finally:
        dev.close()
    with pytest.raises(ConfigError, match="variant"):
        make_device("torch-tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            make_device("torch-cuda")


@pytest.mark.gpu
def test_cuda_graphs_streams_and_event_timing(tiny, mlp):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dev = TorchDevice(2, 1, device="cuda", module_loader=lambda spec: mlp)
    dev.load(tiny)
    try:
        info = dev.describe()
        assert info.accelerator and info.regime == "accelerator"
        streams = {s.stream.cuda_stream for s in dev._slots}
        assert len(streams) == 2 and torch.cuda.default_stream().cuda_stream not in streams
        x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
        before = dev.now()
        result = dev.run_sync(1, BatchJob(1, "tiny", 8, inputs={"x": x}))
        after = dev.now()
        assert result.error is None, result.error
        assert result.extra["graph"] == 1.0
        with torch.no_grad():  # same seed, same weights; `mlp` itself now lives on the GPU
            want = TinyMlp().eval()(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-4, atol=1e-5)
        assert before - 1e-4 <= result.start < result.end <= after + 1e-4  # host clock
        phases = [result.extra[p] for p in PHASES]
        assert all(p > 0 for p in phases)
        assert abs(sum(phases) - result.latency) < 1e-5
        eager = dev.run_sync(0, BatchJob(2, "tiny", 11))  # no graph at this size
        assert eager.error is None and eager.extra["graph"] == 0.0
    finally:
        dev.close()
