"""The batches in flight on one device, and their records once they end.

Every driver of a device (the runtime, trace collection) keeps the same books: which
slots are held, when each batch was dispatched, and the `BatchRecord` of each result.
The ledger keeps them once. It reads no clock: callers pass the times.
"""

from __future__ import annotations

from predlat.devices.base import BatchResult
from predlat.traces.records import BatchRecord


class BatchLedger:
    """Batches dispatched to a device's `slots` and not yet ended.

    `t0` shifts the device clock of the records' start and end (trace collection counts
    from its start); dispatch times are kept as given.
    """

    def __init__(self, slots: int, *, t0: float = 0.0, device: int = 0) -> None:
        self.slots = slots
        self.t0 = t0
        self.device = device
        self._running: dict[int, tuple[int, float]] = {}  # batch id -> (slot, dispatch)
        self.batches = 0  # ended batches, failed ones included
        self.busy_s = 0.0  # slot time they held

    def dispatched(self, batch_id: int, slot: int, at: float) -> None:
        """Batch `batch_id` was sent to `slot` at `at`."""
        self._running[batch_id] = (slot, at)

    def running(self) -> int:
        return len(self._running)

    def free_slots(self) -> list[int]:
        """The slots no batch holds, lowest first."""
        held = {slot for slot, _ in self._running.values()}
        return [s for s in range(self.slots) if s not in held]

    def finish(self, result: BatchResult) -> BatchRecord:
        """Free the batch's slot and return its record (no timeline yet; see
        `attach_timelines`). A failed batch gets one too: the caller decides its fate."""
        _, dispatch = self._running.pop(result.batch_id)
        self.batches += 1
        self.busy_s += result.end - result.start
        return BatchRecord.from_result(result, dispatch, device=self.device, t0=self.t0)
