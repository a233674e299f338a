"""The books every driver keeps (BatchLedger) and the shared slot workers of threaded
devices."""

from __future__ import annotations

import threading

import pytest

from predlat.devices.base import BatchJob, BatchResult, SlotBusyError
from predlat.devices.slots import SlotDevice, SlotWorker
from predlat.errors import ConfigError
from predlat.traces.ledger import BatchLedger


def result(batch_id: int, slot: int, start: float, end: float, error: str | None = None):
    return BatchResult(batch_id, "m", 2, slot, start, end, error=error)


def test_ledger_holds_slots_and_turns_results_into_records() -> None:
    ledger = BatchLedger(3, t0=10.0)
    assert ledger.free_slots() == [0, 1, 2]
    ledger.dispatched(7, 0, 0.5)
    ledger.dispatched(8, 2, 0.6)
    assert ledger.free_slots() == [1] and ledger.running() == 2
    record = ledger.finish(result(7, 0, 10.75, 11.0))
    assert (record.batch_id, record.slot, record.dispatch) == (7, 0, 0.5)
    assert (record.start, record.end) == (0.75, 1.0)  # shifted by t0; dispatch as given
    assert ledger.free_slots() == [0, 1]
    ledger.finish(result(8, 2, 10.6, 10.6, error="boom"))  # a failure frees its slot too
    assert ledger.running() == 0 and ledger.batches == 2
    assert ledger.busy_s == pytest.approx(0.25)
    with pytest.raises(KeyError):
        ledger.finish(result(9, 1, 0.0, 1.0))  # never dispatched


class _Echo(SlotWorker):
    def __init__(self, index: int, gate: threading.Event) -> None:
        super().__init__(index, f"echo-{index}")
        self.gate = gate
        self.start()

    def run(self, job: BatchJob) -> BatchResult:
        self.gate.wait(5)
        return result(job.batch_id, self.index, 0.0, 0.0)


class _EchoDevice(SlotDevice):
    def __init__(self, slots: int) -> None:
        self.num_slots = slots
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self._slots = [_Echo(i, self.gate) for i in range(slots)]


def test_slot_device_runs_refuses_busy_and_unknown_slots_and_stops() -> None:
    device = _EchoDevice(2)
    done: list[BatchResult] = []
    device.submit(0, BatchJob(1, "m", 1), done.append)
    with pytest.raises(SlotBusyError):
        device.submit(0, BatchJob(2, "m", 1), done.append)
    with pytest.raises(ConfigError, match="slot 5"):
        device.submit(5, BatchJob(3, "m", 1), done.append)
    device.gate.set()
    assert device.run_sync(1, BatchJob(4, "m", 1)).batch_id == 4
    device._stop_workers()
    assert [r.batch_id for r in done] == [1]
    assert not any(w.thread.is_alive() for w in device._slots)
