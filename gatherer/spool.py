"""The writer's disk spool: append-only segment files of framed, checksummed batches.

When the local database is down (or a queue overflows) the writer appends each batch here and
replays the segments, oldest first, once the database is back (DESIGN §4.4: bounded memory, no
silent drops). Layout and format:

- ``<dir>/<16-digit sequence>.spool`` segment files; a new segment is started on every open (never
  append behind a possibly torn tail) and when the current one reaches ``segment_bytes``;
- a record is ``MAGIC (4) | payload length (u32 BE) | CRC32 of payload (u32 BE) | payload``;
  ``MAGIC`` holds NUL and SOH bytes, which JSON text never contains, so a scan for the next record
  after damage cannot be fooled by payload text;
- the payload is ``orjson([table, rows])``. JSON loses two types, restored on decode from the
  table contract: uuid columns come back as :class:`uuid.UUID` and bytes (any column) are written as
  ``{"$b": base64}``. None, bool, int, str and (nested) lists survive as they are; rows come back
  as tuples.

Damage is reported, not raised: a record cut short at the end of a segment (a crash mid-write, or
a zero-filled tail after a power loss) is a *torn tail*; a bad checksum or magic followed by more
data is *corrupt*, and reading resumes at the next valid record.

The framing and the payload codec are pure functions over bytes; :class:`Spool` is the file shell.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import mmap
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from gatherer.errors import SpoolFormatError
from kalshi_data.tables import BY_NAME

log = logging.getLogger(__name__)

MAGIC = b"\x00KS\x01"
HEADER = struct.Struct(">4sII")
#: A single record larger than this is treated as damage (a batch is a few MB at most).
MAX_RECORD_BYTES = 1 << 30
SUFFIX = ".spool"
DEFAULT_SEGMENT_BYTES = 16 << 20

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- payload codec
def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):  # a subclass (asyncpg's C UUID); orjson takes only the base
        return str(value)
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def encode_payload(table: str, rows: Sequence[Row]) -> bytes:
    """Serialise one batch. Raises TypeError/orjson.JSONEncodeError for unserialisable values."""
    return orjson.dumps([table, rows], default=_default)


def _restore_bytes(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$b" in value:
            return base64.b64decode(value["$b"])
        return {k: _restore_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_bytes(v) for v in value]
    return value


def _uuid_or_same(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return value
    return value


_UUID_COLUMNS: dict[str, tuple[int, ...]] = {
    spec.name: tuple(i for i, c in enumerate(spec.columns) if c.pgtype == "uuid")
    for spec in BY_NAME.values()
}


def decode_payload(payload: bytes) -> tuple[str, list[Row]]:
    """Inverse of :func:`encode_payload` (uuid columns from the table contract)."""
    doc = orjson.loads(payload)
    if not (
        isinstance(doc, list)
        and len(doc) == 2
        and isinstance(doc[0], str)
        and isinstance(doc[1], list)
    ):
        raise SpoolFormatError("spool payload is not [table, rows]")
    table: str = doc[0]
    raw_rows: list[Any] = doc[1]
    # `"$b"` appears in the payload only as a key written by _default: JSON strings escape quotes.
    if b'"$b"' in payload:
        raw_rows = [_restore_bytes(r) for r in raw_rows]
    uuid_cols = _UUID_COLUMNS.get(table, ())
    rows: list[Row] = []
    for raw in raw_rows:
        if not isinstance(raw, list):
            raise SpoolFormatError("spool row is not a list")
        if uuid_cols:
            for i in uuid_cols:
                if i < len(raw):
                    raw[i] = _uuid_or_same(raw[i])
        rows.append(tuple(raw))
    return table, rows


# --------------------------------------------------------------------------- framing
def encode_frame(payload: bytes) -> bytes:
    """``MAGIC | length | crc32 | payload``."""
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """One intact record: its payload and where it sits in the segment."""

    offset: int
    end: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that are not an intact record: a torn tail, or corruption that was skipped."""

    offset: int
    end: int
    kind: Literal["torn_tail", "corrupt"]


def _is_zero(buf: Any, start: int, end: int) -> bool:
    step = 1 << 16
    for pos in range(start, end, step):
        chunk = bytes(buf[pos : min(end, pos + step)])
        if chunk.count(0) != len(chunk):
            return False
    return True


def iter_frames(buf: Any) -> Iterator[Frame | Damage]:
    """Walk a segment's bytes (``bytes`` or ``mmap``): intact frames and damaged stretches."""
    size = len(buf)
    pos = 0
    while pos < size:
        payload = _frame_payload(buf, pos, size)
        if payload is not None:
            end = pos + HEADER.size + len(payload)
            yield Frame(pos, end, payload)
            pos = end
            continue
        nxt = buf.find(MAGIC, pos + 1)
        while nxt != -1 and _frame_payload(buf, nxt, size) is None:
            nxt = buf.find(MAGIC, nxt + 1)
        if nxt == -1:
            yield Damage(pos, size, "torn_tail")
            return
        yield Damage(pos, nxt, "corrupt")
        pos = nxt


def _frame_payload(buf: Any, pos: int, size: int) -> bytes | None:
    """The payload of the intact frame starting at ``pos``, or None (short, bad magic or CRC)."""
    if size - pos < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_RECORD_BYTES or pos + HEADER.size + length > size:
        return None
    start = pos + HEADER.size
    payload = bytes(buf[start : start + length])
    return payload if zlib.crc32(payload) == crc else None


# --------------------------------------------------------------------------- file shell
def _log_damage(path: Path, damage: Damage, buf: Any) -> None:
    n = damage.end - damage.offset
    if damage.kind == "corrupt":
        log.error(
            "spool segment %s: %d corrupt bytes at byte %d skipped, reading on from the next "
            "intact record",
            path.name,
            n,
            damage.offset,
        )
    elif _is_zero(buf, damage.offset, damage.end):
        log.warning(
            "spool segment %s: zero-filled tail of %d bytes at byte %d ignored (power loss "
            "during a write)",
            path.name,
            n,
            damage.offset,
        )
    else:
        log.warning(
            "spool segment %s: torn tail of %d bytes at byte %d ignored (a crash interrupted a "
            "write; the complete records before it are replayed)",
            path.name,
            n,
            damage.offset,
        )


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """A decoded record of a segment."""

    offset: int
    end: int
    table: str
    rows: list[Row]


def _segment_seq(path: Path) -> int | None:
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Segment files in one directory, appended by the writer and replayed oldest first.

    Not thread-safe: one event loop owns it. ``append`` writes (the data survives a process crash
    from then on, being in the kernel's page cache); ``sync``/``sync_async`` make it survive a host
    crash too.

    Args:
        directory: created (mode 0700) when missing.
        segment_bytes: a segment is closed once it reaches this size.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._closed: list[Path] = []
        self._sizes: dict[Path, int] = {}
        last = 0
        for path in self.directory.iterdir():
            seq = _segment_seq(path)
            if seq is None or not path.is_file():
                continue
            last = max(last, seq)
            size = path.stat().st_size
            if size == 0:
                path.unlink()
                continue
            self._closed.append(path)
            self._sizes[path] = size
        self._closed.sort(key=lambda p: _segment_seq(p) or 0)
        self._next_seq = last + 1
        self._current: Path | None = None
        self._fd: int | None = None
        self._dir_dirty = False
        self._bytes = sum(self._sizes.values())

    # ------------------------------------------------------------------ state
    @property
    def bytes(self) -> int:
        """Bytes in every segment (closed and current)."""
        return self._bytes

    def has_data(self) -> bool:
        """True when any segment holds bytes."""
        return self._bytes > 0

    def closed_segments(self) -> list[Path]:
        """Closed segments, oldest first (the current one is not among them: :meth:`seal` it)."""
        return list(self._closed)

    # ------------------------------------------------------------------ writing
    def _open_segment(self) -> int:
        path = self.directory / f"{self._next_seq:016d}{SUFFIX}"
        self._next_seq += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._current, self._fd = path, fd
        self._sizes[path] = 0
        self._dir_dirty = True
        return fd

    def append(
        self, table: str, rows: Sequence[Row], *, on_reject: Callable[[Row, str], None]
    ) -> int:
        """Append one batch as one record; returns the bytes written.

        A row that cannot be serialised (an int beyond 64 bits, an unknown object) is left out
        and handed to ``on_reject(row, reason)`` so the caller can dead-letter it.

        Raises:
            OSError: the disk refused (ENOSPC, EFBIG, EIO, a segment that cannot be created). No
                part of the batch counts as spooled: the caller keeps its rows. A partial record
                is cut off and the segment closed, so the next append starts a fresh segment.
        """
        if not rows:
            return 0
        try:
            payload = encode_payload(table, rows)
        except (TypeError, orjson.JSONEncodeError):
            good: list[Row] = []
            for row in rows:
                try:
                    encode_payload(table, [row])
                except (TypeError, orjson.JSONEncodeError) as exc:
                    on_reject(row, f"spool {type(exc).__name__}: {exc}"[:500])
                else:
                    good.append(row)
            if not good:
                return 0
            payload = encode_payload(table, good)
        frame = encode_frame(payload)
        fd = self._fd if self._fd is not None else self._open_segment()
        assert self._current is not None
        start = self._sizes[self._current]
        view = memoryview(frame)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            self._abandon(start)
            raise
        self._sizes[self._current] += len(frame)
        self._bytes += len(frame)
        if self._sizes[self._current] >= self.segment_bytes:
            self.seal()
        return len(frame)

    def _abandon(self, start: int) -> None:
        """After a failed write: cut the partial record off and close the segment.

        The next append opens a fresh segment (never writing behind a possibly torn record). If
        even the truncate fails, the partial record stays as a torn/corrupt stretch that replay
        skips (the rows of that failed append are the caller's to keep: nothing of them counts).
        """
        fd, path = self._fd, self._current
        assert fd is not None
        assert path is not None
        kept = start
        try:
            os.ftruncate(fd, start)
        except OSError:
            log.exception("spool segment %s: could not cut a failed write off", path.name)
            with contextlib.suppress(OSError):
                kept = os.fstat(fd).st_size
        with contextlib.suppress(OSError):
            os.close(fd)
        self._fd, self._current = None, None
        self._sizes[path] = kept
        self._bytes += kept - start
        if kept == 0:
            self._sizes.pop(path)
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            self._closed.append(path)
        self._dir_dirty = True

    def sync(self) -> None:
        """fsync the current segment and, after a segment was created or removed, the folder."""
        if self._fd is not None:
            os.fsync(self._fd)
        if self._dir_dirty:
            _fsync_dir(self.directory)
            self._dir_dirty = False

    async def sync_async(self) -> None:
        """:meth:`sync` in a worker thread (on a duplicate descriptor: safe across a seal)."""
        fd = os.dup(self._fd) if self._fd is not None else None
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            if fd is not None:
                await asyncio.to_thread(os.fsync, fd)
            if dir_dirty:
                await asyncio.to_thread(_fsync_dir, self.directory)
        finally:
            if fd is not None:
                os.close(fd)

    def seal(self) -> None:
        """Close the current segment (fsync'd) so it can be replayed; appends start a new one."""
        if self._fd is None or self._current is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._closed.append(self._current)
        self._fd, self._current = None, None
        self._dir_dirty = True

    def close(self) -> None:
        """Seal and fsync; the spool can be reopened by a new :class:`Spool` later."""
        self.seal()
        self.sync()

    # ------------------------------------------------------------------ reading
    def read(self, path: Path) -> Generator[SpoolBatch | Damage, None, None]:
        """Decoded batches and damage reports of one closed segment, in file order."""
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for item in iter_frames(buf):
                if isinstance(item, Damage):
                    _log_damage(path, item, buf)
                    yield item
                    continue
                try:
                    table, rows = decode_payload(item.payload)
                except (orjson.JSONDecodeError, SpoolFormatError):
                    log.exception(
                        "spool segment %s: undecodable record at byte %d skipped",
                        path.name,
                        item.offset,
                    )
                    yield Damage(item.offset, item.end, "corrupt")
                    continue
                yield SpoolBatch(item.offset, item.end, table, rows)

    def quarantine(self, path: Path) -> Path:
        """Set a replayed segment that held corrupt bytes aside (``.corrupt``) for inspection."""
        with contextlib.suppress(ValueError):
            self._closed.remove(path)
        self._bytes -= self._sizes.pop(path, 0)
        target = path.with_name(path.name + ".corrupt")
        path.rename(target)
        self._dir_dirty = True
        return target

    def remove(self, path: Path) -> None:
        """Delete a closed segment whose batches have all been committed."""
        with contextlib.suppress(ValueError):
            self._closed.remove(path)
        self._bytes -= self._sizes.pop(path, 0)
        path.unlink(missing_ok=True)
        self._dir_dirty = True
