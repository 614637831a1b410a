"""REST fault state: bursts of 429 or 5xx answers for the next N requests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RestFaults:
    """Pending forced answers; 429 bursts are served before 5xx bursts."""

    pending_429: int = 0
    pending_5xx: int = 0
    status_5xx: int = 503
    served: int = 0

    def next_status(self) -> int | None:
        """The forced status for the next request, or None to serve it normally."""
        if self.pending_429 > 0:
            self.pending_429 -= 1
            self.served += 1
            return 429
        if self.pending_5xx > 0:
            self.pending_5xx -= 1
            self.served += 1
            return self.status_5xx
        return None
