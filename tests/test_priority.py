"""Compute threads at a lower CPU priority than the event loop: slot threads, decode
workers, and the server applying its setting at start."""

from __future__ import annotations

import os
import sys
import threading

import httpx
import pytest

from predlat.devices.onnxruntime_device import OrtDevice, OrtDeviceConfig
from predlat.devices.priority import MAX_NICE, lower_device_priority, lower_priority
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.decode import OffLoopDecoder
from predlat.serving.server import BackgroundServer

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def nice_of(tid: int = 0) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def parked_thread() -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    return thread, stop


@linux_only
def test_lower_priority_changes_only_the_thread_named():
    thread, stop = parked_thread()
    try:
        assert thread.native_id is not None
        before, mine = nice_of(thread.native_id), nice_of()
        assert lower_priority(3, thread.native_id)
        assert nice_of(thread.native_id) == min(MAX_NICE, before + 3)
        assert nice_of() == mine  # the caller's own priority is untouched
    finally:
        stop.set()


@linux_only
def test_lower_priority_is_capped_and_ignores_zero_steps():
    thread, stop = parked_thread()
    try:
        assert thread.native_id is not None
        before = nice_of(thread.native_id)
        assert not lower_priority(0, thread.native_id)
        assert nice_of(thread.native_id) == before
        assert lower_priority(100, thread.native_id)
        assert nice_of(thread.native_id) == MAX_NICE
    finally:
        stop.set()


@linux_only
def test_slot_device_lowers_its_slot_threads_not_the_caller():
    device = OrtDevice(OrtDeviceConfig(num_slots=2))
    try:
        mine = nice_of()
        assert device.lower_priority(2) == 2
        for worker in device._slots:
            assert worker.thread.native_id is not None
            assert nice_of(worker.thread.native_id) == min(MAX_NICE, mine + 2)
        assert nice_of() == mine
    finally:
        device.close()


def test_device_without_compute_threads_is_left_alone():
    assert lower_device_priority(None, 5) == 0
    assert lower_device_priority(object(), 5) == 0


@linux_only
def test_decode_workers_start_at_the_lower_priority():
    decoder = OffLoopDecoder(processes=1, offload_bytes=100, nice=4)
    decoder.start()
    try:
        assert decoder._pool is not None
        assert decoder._pool.submit(os.nice, 0).result() == min(MAX_NICE, nice_of() + 4)
    finally:
        decoder.close()


class RecordingDevice:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def lower_priority(self, steps: int) -> int:
        self.steps.append(steps)
        return 1


@pytest.mark.parametrize("steps", [0, 7])
def test_server_lowers_its_runtime_device_at_start(runtime, spec, steps):
    runtime.device = RecordingDevice()
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}, compute_nice=steps))
    with BackgroundServer(app) as server:
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert runtime.device.steps == ([steps] if steps else [])
