"""The ground-truth log: every data message the exchange emitted, one JSON line per event.

Line format: ``{"type": <frame type>, "msg": <msg exactly as sent>}``. Lines are buffered in
memory and written by :meth:`TruthLog.flush`, which the server calls at least every 100 ms and
on stop. Subscription snapshots and initial tickers are replies, not events: never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO


class TruthLog:
    """Append-only JSON Lines file with an in-memory buffer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buf: list[bytes] = []
        self._file: BinaryIO | None = path.open("ab")
        self.lines = 0

    def append(self, frame_type: str, msg: bytes) -> None:
        """Buffer one event line."""
        self._buf.append(b'{"type":"%b","msg":%b}\n' % (frame_type.encode(), msg))
        self.lines += 1

    def flush(self) -> None:
        """Write buffered lines and flush them to the operating system."""
        if self._file is None:
            return
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
