"""Finished batches with their co-location timelines, and trace files (Parquet)."""

from predlat.traces.records import BatchRecord, Overlap, attach_timelines
from predlat.traces.trace_file import (
    Trace,
    TraceFileError,
    read_trace,
    read_trace_metadata,
    write_trace,
)

__all__ = [
    "BatchRecord",
    "Overlap",
    "Trace",
    "TraceFileError",
    "attach_timelines",
    "read_trace",
    "read_trace_metadata",
    "write_trace",
]
