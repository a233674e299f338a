"""Sampling other processes' CPU share during a trace (the meter lives with the profiler,
which needs it too and sits below traces)."""

from __future__ import annotations

from predlat.profiling.cpu_meter import CpuMeter

CPU_SAMPLE_S = 0.5  # period of the other-processes CPU samples kept with a trace

__all__ = ["CPU_SAMPLE_S", "CpuMeter"]
