"""Finished batches with their co-location timelines, and trace files (Parquet)."""

from predlat.traces.records import BatchRecord, Overlap, attach_timelines

__all__ = ["BatchRecord", "Overlap", "attach_timelines"]
