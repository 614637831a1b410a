"""Deduplicator exceptions.

KalshiDataError    (kalshi_data.errors: the core's root)
└── DedupError     base of the deduplicator's own errors
    ├── NotLeader      the fencing check failed: another instance took the lease (step down)
    ├── CursorMoved    the stored cursor is not the one this batch started from (reload, retry)
    ├── SourceError    a gatherer database failed (its breaker counts it); cause attached
    └── FatalError     a permanent error: the process exits non-zero with this message
"""

from __future__ import annotations

from kalshi_data.errors import KalshiDataError


class DedupError(KalshiDataError):
    """Base of the deduplicator's own errors."""


class NotLeader(DedupError):
    """This instance no longer holds the lease; its write was rolled back."""


class CursorMoved(DedupError):
    """The cursor changed under us (a concurrent writer): reload and retry."""


class SourceError(DedupError):
    """Reading a gatherer failed; ``__cause__`` holds the driver error."""

    def __init__(self, gatherer: str, message: str) -> None:
        super().__init__(f"gatherer {gatherer}: {message}")
        self.gatherer = gatherer


class FatalError(DedupError):
    """A permanent error (authentication, missing database or table): stop with a message."""
