"""The parser's fast paths accept exactly what the careful paths accept, with equal results.

``parse.py`` reads the hot payloads (delta, ticker, trade) and the envelope through memo lookups
and falls back to the careful readers on anything unusual. These properties mutate valid frames
field by field (missing, null, wrong type, out of range, unseen value) and compare the fast
result with the careful one: the same record, or a rejection in both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kalshi_data.kalshi import parse
from kalshi_data.kalshi.parse import DeadLetter, Frame, decode_frame

DELTA = {
    "market_ticker": "KXFAST-26AUG22-B160",
    "market_id": "e1b81ebf-9511-4e54-877c-97894f02122f",
    "price_dollars": "0.5300",
    "delta_fp": "-5.00",
    "side": "yes",
    "ts": "2023-11-14T22:13:20Z",
    "ts_ms": 1_700_000_000_000,
}
TICKER = {
    "market_id": "e1b81ebf-9511-4e54-877c-97894f02122f",
    "market_ticker": "KXFAST-26AUG22-B160",
    "price_dollars": "0.1600",
    "yes_bid_dollars": "0.1600",
    "yes_ask_dollars": "0.1800",
    "volume_fp": "21.00",
    "open_interest_fp": "21.00",
    "dollar_volume": 3,
    "dollar_open_interest": 3,
    "yes_bid_size_fp": "23.00",
    "yes_ask_size_fp": "43.00",
    "last_trade_size_fp": "21.00",
    "ts": 1_700_000_000,
    "ts_ms": 1_700_000_000_000,
    "time": "2023-11-14T22:13:20.000Z",
}
TRADE = {
    "trade_id": "259087dc-fe9a-4af5-9dd3-0a7168f28a5b",
    "market_ticker": "KXFAST-26AUG22-B160",
    "yes_price_dollars": "0.1600",
    "no_price_dollars": "0.8400",
    "count_fp": "21.00",
    "taker_side": "no",
    "taker_outcome_side": "no",
    "taker_book_side": "ask",
    "is_block_trade": False,
    "ts": 1_700_000_000,
    "ts_ms": 1_700_000_000_000,
}

Parser = Callable[[dict[str, Any], int | None, int | None], Any]


def _careful_trade(msg: dict[str, Any], sid: int | None, seq: int | None) -> Any:
    return parse._trade(msg, sid, seq, "market_ticker")


CASES: list[tuple[dict[str, Any], Parser, Parser]] = [
    (DELTA, parse._delta, parse._delta_checked),
    (TICKER, parse._ticker_msg, parse._ticker_checked),
    (TRADE, parse._ws_trade, _careful_trade),
]

#: Values a hostile or buggy peer could put in any field, tried one field at a time.
FIXED_ODD: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**15,
    10**15 + 1,
    -(10**15) - 1,
    946_684_799_999,
    946_684_800_000,
    4_102_444_799_999,
    4_102_444_800_000,
    1.5,
    [],
    {},
    "",
    "0.0000",
    "1.0000",
    "1.0001",
    "0.12345",
    "-0.5000",
    "0.00",
    "-0.00",
    "-5.00",
    "99999999999999.00",
    "yes",
    "no",
    "YES",
    "bad ticker",
    "{e1b81ebf-9511-4e54-877c-97894f02122f}",
    "urn:uuid:e1b81ebf-9511-4e54-877c-97894f02122f",
    "not-a-uuid",
    "2023-11-14T22:13:20Z",
    "x" * 70,
]
ODD_VALUES = st.one_of(
    st.sampled_from([*FIXED_ODD, "5.00", "KXFAST-26AUG22-B160"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=946_684_800_000 - 2, max_value=946_684_800_000 + 2),
    st.integers(min_value=4_102_444_800_000 - 2, max_value=4_102_444_800_000 + 2),
    st.text(max_size=12),
)


def _outcome(fn: Parser, msg: dict[str, Any], sid: int | None, seq: int | None) -> Any:
    try:
        return ("record", fn(msg, sid, seq))
    except parse._Reject as exc:
        return ("reject", str(exc))


def _same_types(a: Any, b: Any) -> bool:
    """Equal records can still differ in a uuid's class (the C UUID): compare as uuids."""
    if a[0] != "record":
        return True
    for x, y in zip(a[1].__slots__, b[1].__slots__, strict=True):
        assert x == y
        va, vb = getattr(a[1], x), getattr(b[1], x)
        if isinstance(va, uuid.UUID) or isinstance(vb, uuid.UUID):
            assert isinstance(va, uuid.UUID)
            assert isinstance(vb, uuid.UUID)
            assert va.bytes == vb.bytes
        else:
            assert type(va) is type(vb), (x, va, vb)
    return True


@settings(max_examples=400, deadline=None)
@given(
    case=st.sampled_from(range(len(CASES))),
    edits=st.dictionaries(
        st.sampled_from(sorted(set(DELTA) | set(TICKER) | set(TRADE))),
        st.one_of(st.just("<drop>"), ODD_VALUES),
        max_size=3,
    ),
    sid=st.one_of(st.none(), st.integers(0, 9)),
    seq=st.one_of(st.none(), st.integers(0, 9)),
)
def test_fast_payload_paths_match_the_careful_ones(case, edits, sid, seq):
    """Fast parse == careful parse for valid and mutated payloads (memos warm or not)."""
    base, fast, careful = CASES[case]
    msg = dict(base)
    for key, value in edits.items():
        if value == "<drop>":
            msg.pop(key, None)
        else:
            msg[key] = value
    careful(dict(base), sid, seq)  # warm the memos with the valid values
    want = _outcome(careful, msg, sid, seq)
    got = _outcome(fast, msg, sid, seq)
    assert got == want
    assert _same_types(got, want)
    # And again now that the careful path may have memoised the edited values.
    assert _outcome(fast, msg, sid, seq) == want


def test_every_single_field_edit_matches_the_careful_path():
    """Each field of each hot payload, dropped or set to each odd value: fast == careful."""
    checked = 0
    for base, fast, careful in CASES:
        careful(dict(base), 1, 1)  # warm memos
        for key in base:
            for value in ["<drop>", *FIXED_ODD]:
                msg = dict(base)
                if value == "<drop>":
                    del msg[key]
                else:
                    msg[key] = value
                want = _outcome(careful, msg, 1, 1)
                assert _outcome(fast, msg, 1, 1) == want, (key, value)
                checked += 1
    assert checked == sum(len(b) for b, _, _ in CASES) * (len(FIXED_ODD) + 1)


ENVELOPE_KEYS = ("type", "id", "sid", "seq")


@settings(max_examples=300, deadline=None)
@given(
    edits=st.dictionaries(
        st.sampled_from(ENVELOPE_KEYS), st.one_of(st.just("<drop>"), ODD_VALUES), max_size=3
    ),
    as_text=st.booleans(),
)
def test_fast_envelope_matches_the_careful_one(edits, as_text):
    """decode_frame's fast envelope check == the careful one, for bytes and for text frames."""
    obj: dict[str, Any] = {"type": "orderbook_delta", "sid": 3, "seq": 7, "msg": DELTA}
    for key, value in edits.items():
        if value == "<drop>":
            obj.pop(key, None)
        else:
            obj[key] = value
    raw = json.dumps(obj).encode()  # stdlib: also writes ints beyond 64 bits
    frame = decode_frame(raw.decode() if as_text else raw)
    want = parse._decode_frame_checked(raw)
    if isinstance(want, DeadLetter):
        assert isinstance(frame, DeadLetter)
        assert frame == want  # same reason, raw always as bytes
    else:
        assert isinstance(frame, Frame)
        assert (frame.type, frame.id, frame.sid, frame.seq, frame.msg) == (
            want.type,
            want.id,
            want.sid,
            want.seq,
            want.msg,
        )


def test_a_text_frame_that_is_not_json_is_a_dead_letter_with_bytes():
    """Text frames (aiohttp's str) that fail keep their raw bytes in the dead letter."""
    out = decode_frame('{"type": "trade", "sid": 1, ')
    assert isinstance(out, DeadLetter)
    assert out.raw == b'{"type": "trade", "sid": 1, '
    assert out.reason.startswith("invalid JSON")


def test_uuid_forms_the_c_parser_refuses_still_parse():
    """Braces and urn forms are accepted as before (uuid.UUID), plain forms via the C parser."""
    plain = parse._uuid_of("e1b81ebf-9511-4e54-877c-97894f02122f")
    braced = parse._uuid_of("{e1b81ebf-9511-4e54-877c-97894f02122f}")
    assert plain == braced == uuid.UUID("e1b81ebf-9511-4e54-877c-97894f02122f")
    assert isinstance(plain, uuid.UUID)
