"""The serving host's own CPU: counted apart from the batches on a real device, and taken
from the running batches by a simulated device whose law has it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from predlat.devices.base import BatchJob, BatchResult
from predlat.devices.sim_law import InterferenceLaw
from predlat.devices.simulated import SimulatedDevice
from predlat.devices.slots import SlotDevice, SlotWorker
from predlat.errors import ConfigError
from predlat.experiments.compare_runs import host_cpu_metrics
from predlat.profiling.cpu_meter import HostCpuMeter


def _burn(seconds: float) -> None:
    """Spend about `seconds` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class _Busy(SlotWorker):
    def __init__(self, index: int) -> None:
        super().__init__(index, f"busy-{index}")
        self.start()

    def run(self, job: BatchJob) -> BatchResult:
        _burn(0.02)
        return BatchResult(job.batch_id, job.model, job.batch_size, self.index, 0.0, 0.0)


class _BusyDevice(SlotDevice):
    def __init__(self) -> None:
        self.num_slots = 1
        self._lock = threading.Lock()
        self._slots = [_Busy(0)]


def test_slot_threads_count_the_cpu_of_their_batches_and_the_host_the_rest() -> None:
    device = _BusyDevice()
    meter = HostCpuMeter(device)
    device.run_sync(0, BatchJob(1, "m", 1))
    assert device.compute_cpu_s() >= 0.02
    _burn(0.03)  # the host's own work, on this thread
    host, wall = meter.read()
    assert host >= 0.025 and wall > 0
    assert HostCpuMeter(device, exact=False).read() is None  # pool threads: not told apart
    assert HostCpuMeter(object()).read() is None  # a device that does not count
    device._stop_workers()


def test_host_cpu_metrics() -> None:
    assert host_cpu_metrics((0.5, 2.0), 100) == {
        "host_cpu_cores": 0.25,
        "host_cpu_ms_per_batch": 5.0,
    }
    empty = host_cpu_metrics(None, 10)
    assert all(v != v for v in empty.values())  # NaN: unknown


def _ends(law: InterferenceLaw) -> dict[int, float]:
    """Two 100 ms batches, the second submitted at 50 ms, no interference or noise."""
    device = SimulatedDevice(lambda m, n: (0.1, 0.5, 0.5), 2, law)
    device.load("m")
    ends: dict[int, float] = {}
    device.submit(0, BatchJob(1, "m", 1), lambda r: ends.__setitem__(1, r.end))
    device.advance(0.05)
    device.clock.now = 0.05
    device.submit(1, BatchJob(2, "m", 1), lambda r: ends.__setitem__(2, r.end))
    device.close()
    return ends


def test_simulated_host_cpu_is_taken_from_batches_only_when_they_fill_the_cores() -> None:
    quiet = InterferenceLaw(base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0)
    assert _ends(quiet) == pytest.approx({1: 0.1, 2: 0.15})
    # 10 ms of host CPU per batch, half at its start and half at its end: the second
    # start fills both cores, so each batch loses 5 / 2 ms of its time; the first start
    # and both ends found a free core and cost nothing.
    host = InterferenceLaw(
        base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0, host_cpu_s=0.01, host_cores=2
    )
    assert _ends(host) == pytest.approx({1: 0.1025, 2: 0.1525})
    # On three cores nothing fills them: no batch pays.
    spare = InterferenceLaw(
        base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0, host_cpu_s=0.01, host_cores=3
    )
    assert _ends(spare) == pytest.approx({1: 0.1, 2: 0.15})
    # With one core every start and end finds it held: each half is paid, by whoever
    # runs then (the first end costs the second batch its 5 ms too).
    one = InterferenceLaw(
        base=0.0, compute=0.0, memory=0.0, noise_sigma=0.0, host_cpu_s=0.01, host_cores=1
    )
    assert _ends(one) == pytest.approx({1: 0.11, 2: 0.16})
    with pytest.raises(ConfigError, match="host_cores"):
        InterferenceLaw(host_cores=0).validate()
    with pytest.raises(ConfigError, match="host_cpu_s"):
        InterferenceLaw(host_cpu_s=-1.0).validate()


def test_validate_takes_the_probes_host_cpu_from_the_simulated_batches_when_asked(tmp_path):
    from predlat.experiments.validate import SimRunner, run_validate
    from predlat.experiments.validate_report import write_validate_outputs
    from test_sim_validate import CONFIG, _known, _setup

    device = _known()
    setup = _setup(device)
    real = SimRunner(CONFIG, setup, device, lambda threads: (device, setup.profile))

    def runner(spec):  # the "real" runs report the host's CPU, as a runtime's do
        result = real(spec)
        result.metrics.update(host_cpu_metrics((0.4, 2.0), 200))  # 2 ms per batch
        return result

    def run(host_cpu: bool) -> dict:
        return run_validate(
            CONFIG,
            setup=setup,
            real_runner=runner,
            profile_for=lambda threads: setup.profile,
            host_cpu=host_cpu,
        )

    plain, host = run(False), run(True)
    assert plain["calibration"]["handoff"]["host_cpu_ms_per_batch"] == pytest.approx(2.0)
    assert "host_cpu_s" not in plain["device"].get("handoff", {})
    law = host["device"]["handoff"]
    assert host["device"]["version"] == 4
    assert law["host_cpu_s"] == pytest.approx(2e-3) and law["host_cores"] >= 1
    # the same real runs; the simulated ones changed (the arithmetic: tests above)
    side = [{k: r[k]["loads"]["0.8"]["policies"]["oblivious"] for k in ("real", "simulated")}
            for r in (plain, host)]  # fmt: skip
    assert side[0]["real"]["met_frac"] == side[1]["real"]["met_frac"]
    assert side[0]["simulated"]["p99_ms"] != side[1]["simulated"]["p99_ms"]
    text = write_validate_outputs(host, tmp_path / "v")["report"].read_text()
    assert "2.00 ms per batch" in text and "(--host-cpu)" in text
    plain_text = write_validate_outputs(plain, tmp_path / "p")["report"].read_text()
    assert "does not take it from its batches" in plain_text


def test_device_file_version_4_holds_the_host_cpu(tmp_path):
    from predlat.sim.device_file import DeviceFileError, load_device, parse_device, save_device

    spec = load_device("cpu4")
    host = replace(spec, law=replace(spec.law, host_cpu_s=0.001, host_cores=4))
    data = json.loads(save_device(host, tmp_path / "d.json").read_text())
    assert data["version"] == 4 and data["handoff"]["host_cpu_s"] == 0.001
    assert load_device(tmp_path / "d.json").law == host.law
    assert json.loads(save_device(spec, tmp_path / "e.json").read_text())["version"] < 4
    data["version"] = 3
    with pytest.raises(DeviceFileError, match=r"handoff\.host_cpu_s: needs version 4"):
        parse_device(data)
    data.update(version=4, handoff={"host_cpu_s": 0.001, "host_cores": 0})
    with pytest.raises(DeviceFileError, match=r"handoff\.host_cores: expected null or an integer"):
        parse_device(data)
