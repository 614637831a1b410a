"""The disk spool: payload codec, framing, torn tails, corruption, segment files."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatherer.pgcodec import (
    PG_EPOCH_OFFSET_US,
    decode_timestamptz,
    encode_timestamptz,
    error_reason,
    insert_from_stage_sql,
    inserted_count,
    render_raw,
    stage_ddl,
)
from gatherer.spool import (
    HEADER,
    MAGIC,
    Damage,
    Frame,
    Spool,
    SpoolBatch,
    decode_payload,
    encode_frame,
    encode_payload,
    iter_frames,
)
from kalshi_data.tables import BY_NAME, TRADES

DL_ROW = (uuid.uuid4(), "writer", "23514 x", b'\x00\xff raw "$b"', 1_700_000_000_000_001)
TRADE_ROW = (
    uuid.uuid4(),
    "KXBTC-25",
    1_700_000_000_123_456,
    4200,
    5800,
    13600,
    None,
    "yes",
    "yes",
    False,
    7,
    2**62,
    True,
    -5,
)
GAP_ROW = (uuid.uuid4(), "open", None, "trade", ["A", "B", ""], None, 3, 1, None, None, 2)
SNAP_ROW: tuple[Any, ...] = ("T", None, 1, "ws", [1, 2], [3, 4], [], [], -(2**63), 1, 2, False, 3)
LIFE_ROW = ("market", "T", "created", '{"a": [1, "$b"], "\\"$b\\"": null}', 5, None, None, False, 1)


def _reject(row: Any, reason: str) -> None:
    raise AssertionError(f"unexpected reject {row!r}: {reason}")


@pytest.mark.parametrize(
    ("table", "row"),
    [
        ("dead_letters", DL_ROW),
        ("trades", TRADE_ROW),
        ("gaps", GAP_ROW),
        ("orderbook_snapshots", SNAP_ROW),
        ("lifecycle_events", LIFE_ROW),
    ],
)
def test_payload_roundtrips_every_column_type(table: str, row: tuple[Any, ...]) -> None:
    """uuid, bytes, lists, None, bool, big ints and JSON-looking strings come back identical."""
    assert decode_payload(encode_payload(table, [row, row])) == (table, [row, row])


@given(
    st.lists(
        st.tuples(
            st.uuids(),
            st.text(),
            st.integers(-(2**63), 2**63 - 1),
            st.one_of(st.none(), st.booleans()),
            st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=5,
    )
)
def test_payload_roundtrip_property(rows: list[tuple[Any, ...]]) -> None:
    """Arbitrary text, 64-bit ints, None/bool and string lists survive (first column a uuid)."""
    # gaps' first column is a uuid, the rest are generic values for the codec's purpose.
    assert decode_payload(encode_payload("gaps", rows)) == ("gaps", rows)


@given(st.binary(max_size=64))
def test_bytes_roundtrip_property(raw: bytes) -> None:
    """Any bytes value round-trips."""
    row = (uuid.UUID(int=1), "writer", "r", raw, 0)
    assert decode_payload(encode_payload("dead_letters", [row]))[1] == [row]


def test_frames_roundtrip_and_torn_tail_at_every_cut() -> None:
    """Cutting the last record anywhere yields the complete records and one torn tail."""
    payloads = [encode_payload("trades", [TRADE_ROW]) for _ in range(3)]
    data = b"".join(encode_frame(p) for p in payloads)
    full = list(iter_frames(data))
    assert [f.payload for f in full if isinstance(f, Frame)] == payloads
    last_start = len(data) - len(encode_frame(payloads[-1]))
    for cut in range(last_start + 1, len(data)):
        items = list(iter_frames(data[:cut]))
        frames = [i for i in items if isinstance(i, Frame)]
        damage = [i for i in items if isinstance(i, Damage)]
        assert [f.payload for f in frames] == payloads[:2]
        assert damage == [Damage(last_start, cut, "torn_tail")]


def test_corrupt_middle_record_is_skipped_and_reading_resumes() -> None:
    """A flipped payload byte costs only that record; the records after it are read."""
    frames = [encode_frame(encode_payload("trades", [TRADE_ROW])) for _ in range(3)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + HEADER.size + 5] ^= 0xFF
    items = list(iter_frames(bytes(data)))
    assert [type(i) for i in items] == [Frame, Damage, Frame]
    damage = items[1]
    assert isinstance(damage, Damage)
    assert damage.kind == "corrupt"
    assert (damage.offset, damage.end) == (len(frames[0]), len(frames[0]) + len(frames[1]))


def test_zero_filled_tail_is_a_torn_tail() -> None:
    """Zeroes after the last record (power loss on a delayed-allocation filesystem) are ignored."""
    frame = encode_frame(b'["trades",[]]')
    items = list(iter_frames(frame + bytes(100)))
    assert items == [
        Frame(0, len(frame), b'["trades",[]]'),
        Damage(len(frame), len(frame) + 100, "torn_tail"),
    ]


def test_magic_never_appears_in_payloads() -> None:
    """JSON text escapes control bytes, so MAGIC cannot occur inside a payload."""
    row = (uuid.uuid4(), "writer", "\x00KS\x01", MAGIC, 0)
    assert MAGIC not in encode_payload("dead_letters", [row])


def test_spool_append_seal_read_remove(tmp_path: Path) -> None:
    """Records come back in order per segment; bytes are accounted; removal frees them."""
    spool = Spool(tmp_path, segment_bytes=1 << 20)
    n1 = spool.append("trades", [TRADE_ROW], on_reject=_reject)
    n2 = spool.append("dead_letters", [DL_ROW], on_reject=_reject)
    assert spool.bytes == n1 + n2
    assert spool.closed_segments() == []
    spool.sync()
    spool.seal()
    [segment] = spool.closed_segments()
    items = list(spool.read(segment))
    assert [(i.table, i.rows) for i in items if isinstance(i, SpoolBatch)] == [
        ("trades", [TRADE_ROW]),
        ("dead_letters", [DL_ROW]),
    ]
    spool.remove(segment)
    assert not segment.exists()
    assert spool.bytes == 0
    assert not spool.has_data()


def test_segments_rotate_and_reopen_keeps_order(tmp_path: Path) -> None:
    """Small segments rotate; a reopened spool lists them oldest first and never appends to them."""
    spool = Spool(tmp_path, segment_bytes=200)
    for i in range(5):
        spool.append("gaps", [(*GAP_ROW[:-1], i)], on_reject=_reject)
    spool.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    reopened = Spool(tmp_path, segment_bytes=200)
    assert reopened.bytes == sum((tmp_path / n).stat().st_size for n in before)
    segments = reopened.closed_segments()
    assert [p.name for p in segments] == before
    got = [
        b.rows[0][-1] for seg in segments for b in reopened.read(seg) if isinstance(b, SpoolBatch)
    ]
    assert got == [0, 1, 2, 3, 4]
    reopened.append("gaps", [GAP_ROW], on_reject=_reject)
    reopened.seal()
    newest = reopened.closed_segments()[-1]
    assert newest.name not in before


def test_torn_tail_in_file_logged_and_complete_records_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment cut mid-record yields its complete records and logs the torn tail."""
    spool = Spool(tmp_path)
    spool.append("trades", [TRADE_ROW], on_reject=_reject)
    spool.append("trades", [TRADE_ROW, TRADE_ROW], on_reject=_reject)
    spool.seal()
    [segment] = spool.closed_segments()
    size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(encode_frame(encode_payload("trades", [TRADE_ROW]))[:-3])
    reopened = Spool(tmp_path)
    with caplog.at_level(logging.WARNING, logger="gatherer.spool"):
        items = list(reopened.read(segment))
    batches = [i for i in items if isinstance(i, SpoolBatch)]
    assert [len(b.rows) for b in batches] == [1, 2]
    assert next(i for i in items if isinstance(i, Damage)).offset == size
    assert "torn tail" in caplog.text


def test_unserialisable_rows_are_rejected_not_written(tmp_path: Path) -> None:
    """A row orjson cannot encode goes to on_reject; the rest of the batch is spooled."""
    spool = Spool(tmp_path)
    rejected: list[tuple[Any, str]] = []
    bad = (*TRADE_ROW[:5], 2**70, *TRADE_ROW[6:])
    spool.append(
        "trades", [TRADE_ROW, bad, TRADE_ROW], on_reject=lambda r, why: rejected.append((r, why))
    )
    spool.seal()
    [segment] = spool.closed_segments()
    [batch] = list(spool.read(segment))
    assert isinstance(batch, SpoolBatch)
    assert batch.rows == [TRADE_ROW, TRADE_ROW]
    assert [r for r, _ in rejected] == [bad]
    assert rejected[0][1].startswith("spool ")


def test_segment_files_are_private(tmp_path: Path) -> None:
    """Spool segments are created mode 0600 (rows may hold raw frames)."""
    spool = Spool(tmp_path / "spool")
    spool.append("trades", [TRADE_ROW], on_reject=_reject)
    spool.seal()
    [segment] = spool.closed_segments()
    assert os.stat(segment).st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- pgcodec (pure)
@pytest.mark.parametrize(
    "us", [0, -1, 1, PG_EPOCH_OFFSET_US, -(2**62), 2**62, 1_700_000_000_123_456]
)
def test_timestamptz_tuple_codec_inverts(us: int) -> None:
    """encode/decode are exact inverses, relative to PostgreSQL's 2000-01-01 epoch."""
    assert decode_timestamptz(encode_timestamptz(us)) == us
    assert encode_timestamptz(PG_EPOCH_OFFSET_US) == (0,)


def test_stage_sql_uses_contract_columns() -> None:
    """The staging DDL and INSERT name every data column, quoted, and skip conflicts."""
    ddl = stage_ddl(TRADES)
    assert ddl.startswith('CREATE TEMP TABLE IF NOT EXISTS "kd_stage_trades" ("trade_id" uuid,')
    assert '"count" bigint' in ddl
    assert ddl.endswith("ON COMMIT DELETE ROWS")
    sql = insert_from_stage_sql(BY_NAME["gaps"])
    assert sql.endswith('FROM "kd_stage_gaps" ON CONFLICT DO NOTHING')
    assert '"markets"' in sql
    assert inserted_count("INSERT 0 42") == 42
    assert inserted_count("COPY 3") == 0


def test_render_raw_never_raises() -> None:
    """Dead-letter rendering copes with bytes and ints JSON cannot hold."""
    assert b'"$base64"' in render_raw("dead_letters", DL_ROW)
    assert b"row_repr" in render_raw("trades", (2**70,))


def test_error_reason_names_sqlstate_and_constraint() -> None:
    """Server errors give SQLSTATE + constraint; client-side ones their type."""

    class Fake(Exception):
        sqlstate = "23514"
        constraint_name = "trades_yes_price_check"

    assert error_reason(Fake("boom")) == "23514 trades_yes_price_check"
    assert error_reason(ValueError("bad")) == "encode ValueError: bad"


def test_quarantine_sets_a_segment_aside(tmp_path: Path) -> None:
    """A quarantined segment leaves the replay list and the byte count but stays on disk."""
    spool = Spool(tmp_path)
    spool.append("trades", [TRADE_ROW], on_reject=_reject)
    spool.seal()
    [segment] = spool.closed_segments()
    kept = spool.quarantine(segment)
    assert kept.exists()
    assert kept.name.endswith(".spool.corrupt")
    assert spool.closed_segments() == []
    assert spool.bytes == 0
    assert Spool(tmp_path).closed_segments() == []


def test_parser_uuids_spool_and_render_as_plain_uuids() -> None:
    """The parser's uuids (asyncpg's C subclass, which orjson refuses natively) spool and come
    back equal, and a dead-lettered row renders them as their string form."""
    from asyncpg.pgproto.pgproto import UUID as CUUID

    tid = CUUID("259087dc-fe9a-4af5-9dd3-0a7168f28a5b")
    row = (tid, "KXT-1", 1, 1, 9999, 100, None, None, None, False, 1, 1, False, 2)
    table, rows = decode_payload(encode_payload("trades", [row]))
    assert (table, rows) == ("trades", [row])
    assert isinstance(rows[0][0], uuid.UUID)
    assert b"259087dc-fe9a-4af5-9dd3-0a7168f28a5b" in render_raw("trades", row)
