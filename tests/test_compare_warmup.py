"""The warm-up history is taken again while other processes share the machine."""

from __future__ import annotations

import pytest

from predlat.experiments import warmup
from predlat.profiling.cpu_meter import FOREIGN_CPU_LIMIT_ENV


class _Meters:
    """CpuMeter stand-in: each meter made reads the next of `shares`."""

    def __init__(self, shares: list[float]) -> None:
        self.shares = shares
        self.made = 0

    def __call__(self):
        share = self.shares[self.made]
        self.made += 1
        return type("Meter", (), {"foreign_frac": lambda _self: share})()


@pytest.mark.parametrize(
    ("shares", "kept", "made"),
    [
        ([0.02], 0, 1),  # quiet: one history
        ([0.30, 0.05], 1, 2),  # busy, then quiet: the quiet one
        ([0.40, 0.20, 0.30], 1, 3),  # busy throughout: the quietest of three
    ],
)
def test_quiet_history_retries_while_busy_and_keeps_the_quietest(monkeypatch, shares, kept, made):
    monkeypatch.setenv(FOREIGN_CPU_LIMIT_ENV, "0.1")
    meters = _Meters(shares)
    histories = iter([[f"history {i}"] for i in range(3)])
    monkeypatch.setattr(warmup, "CpuMeter", meters)
    monkeypatch.setattr(warmup, "training_trace", lambda *args: next(histories))
    history, share, tries = warmup.quiet_history(None, [], None)
    assert history == [f"history {kept}"]
    assert share == shares[kept]
    assert tries == made == meters.made


def test_no_history_is_not_retried(monkeypatch):
    meters = _Meters([0.9, 0.9])
    monkeypatch.setattr(warmup, "CpuMeter", meters)
    monkeypatch.setattr(warmup, "training_trace", lambda *args: [])
    assert warmup.quiet_history(None, [], None) == ([], None, 1)
