"""Finished batches and their co-location timelines: the data predictors learn from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from predlat.devices.base import PHASES

if TYPE_CHECKING:
    from predlat.devices.base import BatchResult


class Overlap(NamedTuple):
    """A co-runner overlapping a batch during [start, end) (absolute seconds, clipped to
    the batch's own lifetime). (A tuple: one is made per co-runner of every finished
    batch, and a frozen dataclass costs ~3x more.)"""

    batch_id: int
    model: str
    batch_size: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class BatchRecord:
    """One finished batch. Times are absolute seconds on the device clock."""

    batch_id: int
    model: str
    batch_size: int
    slot: int
    dispatch: float
    start: float
    end: float
    timeline: tuple[Overlap, ...] = field(default_factory=tuple)
    device: int = 0  # index of the device, when several are traced together
    # (copy in, compute, copy out) seconds, where the device measures them (PHASES)
    phases: tuple[float, float, float] | None = None

    @classmethod
    def from_result(
        cls, result: BatchResult, dispatch: float, *, device: int = 0, t0: float = 0.0
    ) -> BatchRecord:
        """The record of a device's finished batch (no timeline yet); `t0` shifts the
        device clock's start and end (dispatch is taken as given)."""
        return cls(
            result.batch_id,
            result.model,
            result.batch_size,
            result.slot,
            dispatch,
            result.start - t0,
            result.end - t0,
            device=device,
            phases=_phases(result.extra),
        )

    @property
    def latency(self) -> float:
        return self.end - self.start

    def with_timeline(self, timeline: tuple[Overlap, ...]) -> BatchRecord:
        """This record with `timeline`: what `dataclasses.replace` gives, without its
        per-field work (a scheduler makes one for every finished batch)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.__dict__["timeline"] = timeline
        return out

    def co_runners_at_start(self) -> tuple[Overlap, ...]:
        """Co-runners already running when this batch started (the gpulet view)."""
        return tuple(o for o in self.timeline if o.start <= self.start + 1e-9)


def _phases(extra: dict[str, float]) -> tuple[float, float, float] | None:
    if not all(key in extra for key in PHASES):
        return None
    copy_in, compute, copy_out = (float(extra[key]) for key in PHASES)
    return copy_in, compute, copy_out


def attach_timelines(records: Sequence[BatchRecord]) -> list[BatchRecord]:
    """Fill each record's timeline with every other batch on the same device that
    overlapped it. Sweep over start times: O(n log n + overlaps)."""
    ordered = sorted(records, key=lambda r: (r.device, r.start))
    out: list[BatchRecord] = []
    active: list[BatchRecord] = []
    overlaps: dict[int, list[Overlap]] = {r.batch_id: [] for r in ordered}
    current_device = None
    for rec in ordered:
        if rec.device != current_device:
            active, current_device = [], rec.device
        active = [a for a in active if a.end > rec.start]
        for other in active:
            lo, hi = rec.start, min(rec.end, other.end)
            if hi > lo:
                overlaps[rec.batch_id].append(
                    Overlap(other.batch_id, other.model, other.batch_size, lo, hi)
                )
                overlaps[other.batch_id].append(
                    Overlap(rec.batch_id, rec.model, rec.batch_size, lo, hi)
                )
        active.append(rec)
    for rec in ordered:
        timeline = tuple(sorted(overlaps[rec.batch_id], key=lambda o: (o.start, o.batch_id)))
        out.append(rec.with_timeline(timeline))
    out.sort(key=lambda r: (r.end, r.batch_id))
    return out
