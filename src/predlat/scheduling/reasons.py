"""Why a request was rejected, as a type: drivers and the server branch on the kind, never
on the wording. Each `.value` is the start of the human-readable reason the client sees."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    MODEL_NOT_SERVED = "model not served"
    BAD_SIZE = "bad request size"
    QUEUE_FULL = "queue full"
    DEADLINE = "deadline cannot be met"
    EXPIRED = "deadline can no longer be met"
    SHUTTING_DOWN = "shutting down"


def http_status(reason: RejectReason | None) -> int:
    """429 when the server is overloaded (a full queue: retry later), 503 otherwise (the
    deadline cannot be met, shutting down, or the reason is unknown)."""
    return 429 if reason is RejectReason.QUEUE_FULL else 503
