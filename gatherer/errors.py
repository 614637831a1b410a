"""The gatherer's exception tree.

    KalshiDataError                 (kalshi_data.errors: the core's root)
    └── GathererError               base of the gatherer's own errors
        ├── SpoolFormatError        (also a ValueError) a spool record's checksum matched but its
        │                           payload is not a ``[table, rows]`` batch: skipped on replay
        └── SessionEnded            a WebSocket session ended without a fault (a clean server
                                    close, a pause): the reconnect supervisor backs off and
                                    connects again, without a warning

Faults of the exchange, the network or PostgreSQL reach the gatherer as the core's
``TransientError``/``PermanentError`` or as driver exceptions, and are classified by
``kalshi_data.resilience.classify``; misuse of an API (``Writer.start()`` twice) stays a builtin
``RuntimeError``.
"""

from __future__ import annotations

from kalshi_data.errors import KalshiDataError


class GathererError(KalshiDataError):
    """Base of the gatherer's own errors."""


class SpoolFormatError(GathererError, ValueError):
    """A record's checksum matched but its payload is not a ``[table, rows]`` batch."""


class SessionEnded(GathererError):
    """A WebSocket session ended without a fault; it is reconnected like a failed one."""
