"""How the garbage collector runs while a scheduler serves.

Reference counting frees nearly everything a decision allocates; the cyclic collector
only adds pauses, and a pause lands on whichever event happens to allocate the object
that crosses its threshold: a batch end (the event with the most work) more often than
not. Two things make its passes rarer and shorter:

- `gc.freeze()` after start-up moves what is alive then (profile, predictor, models,
  the caller's data) out of its reach, so a pass scans only what serving allocates;
- a higher young-generation threshold: CPython counts container allocations net of
  frees, so under steady serving it is mostly queued requests and finished records that
  add up to it. Counting ~14 times as many before a pass leaves ~14 times fewer passes;
  each scans what survived since the last one, so it is longer (in bench_scheduler,
  which keeps every outcome alive: ~3 ms instead of ~0.1 ms). Fewer events pay for a
  pass, which is what the tail percentiles measure; the rare worst pause is longer.

`GcPolicy.apply()` does both and returns an `AppliedGcPolicy` that counts the passes
since and undoes both when closed (frozen objects are never collected: a process that runs
one runtime after another must unfreeze, or each one's cycles would outlive it).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

# CPython's default young threshold is 700 allocations.
DEFAULT_YOUNG = 10_000


def collections() -> tuple[int, ...]:
    """Passes so far, per generation (young, middle, old), in this process."""
    return tuple(s["collections"] for s in gc.get_stats())


@dataclass(frozen=True)
class GcPolicy:
    """`freeze`: move what is alive at `apply` out of the collector's reach.
    `young`: the young-generation threshold while applied (None: leave it)."""

    freeze: bool = True
    young: int | None = DEFAULT_YOUNG

    def apply(self) -> AppliedGcPolicy:
        applied = AppliedGcPolicy(gc.get_threshold(), self.freeze)
        if self.freeze:
            gc.collect()
            gc.freeze()
        if self.young is not None:
            _, middle, old = applied.previous
            gc.set_threshold(max(1, self.young), middle, old)
        applied.thresholds = gc.get_threshold()
        applied.start = collections()
        return applied


@dataclass
class AppliedGcPolicy:
    """A policy in force: `passes()` counts the collections since it was applied;
    `close()` restores the thresholds and unfreezes (once; later calls do nothing). The
    thresholds are restored only if they are still the ones it set: of two policies
    closed in the order they were applied, the second must not bring back the first's."""

    previous: tuple[int, int, int]
    frozen: bool
    thresholds: tuple[int, int, int] | None = None  # the ones it set
    start: tuple[int, ...] = field(default_factory=collections)
    closed: bool = False

    def passes(self) -> tuple[int, ...]:
        return tuple(now - then for now, then in zip(collections(), self.start, strict=True))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if gc.get_threshold() == self.thresholds:
            gc.set_threshold(*self.previous)
        if self.frozen:
            gc.unfreeze()
