"""Co-location timelines of finished batches (kept in predlat.predict.timeline)."""

from predlat.predict.timeline import TimelineTracker

__all__ = ["TimelineTracker"]
