"""The parser's memos live in one object, and the asyncpg uuid accelerator is optional.

The accelerator check runs the same frames through the parser in a child interpreter where
``asyncpg.pgproto`` cannot be imported, and compares every record (or dead-letter reason) with
this process's, which uses the accelerator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from kalshi_data.kalshi import parse

ROOT = Path(__file__).resolve().parents[3]

TICKER = "KXMEMO-26AUG22-B160"
MID = "e1b81ebf-9511-4e54-877c-97894f02122f"

UUID_FORMS = [
    MID,
    MID.upper(),
    "{" + MID + "}",
    "urn:uuid:" + MID,
    MID.replace("-", ""),
    "e1b81ebf9511-4e54-877c-97894f02122f",
    "e1b81ebf-9511-4e54-877c-97894f02122",  # one digit short
    "e1b81ebf-9511-4e54-877c-97894f02122g",  # not hex
    " " + MID,
    "",
]


def _frames() -> list[bytes]:
    out: list[bytes] = []
    for i, form in enumerate(UUID_FORMS):
        delta = {
            "market_ticker": TICKER,
            "market_id": form,
            "price_dollars": "0.5300",
            "delta_fp": "-5.00",
            "side": "yes",
            "ts_ms": 1_700_000_000_000 + i,
        }
        trade = {
            "trade_id": form,
            "market_ticker": TICKER,
            "yes_price_dollars": "0.1600",
            "no_price_dollars": "0.8400",
            "count_fp": "21.00",
            "taker_side": "no",
            "ts_ms": 1_700_000_000_000 + i,
        }
        for _ in range(2):  # the second time through, the memos and fast paths answer
            out.append(_frame("orderbook_delta", 1, i, delta))
            out.append(_frame("trade", 2, i, trade))
    return out


def _frame(frame_type: str, sid: int, seq: int, msg: dict[str, Any]) -> bytes:
    return json.dumps({"type": frame_type, "sid": sid, "seq": seq, "msg": msg}).encode()


def _render(frames: list[bytes]) -> list[Any]:
    """Each frame's outcome as plain JSON-able data (uuids as their canonical text)."""
    rendered: list[Any] = []
    for f in frames:
        out = parse.parse_frame(f)
        if isinstance(out, parse.DeadLetter):
            rendered.append(["dead", out.reason])
        else:
            rendered.append(
                [type(out).__name__, {k: str(v) for k, v in sorted(vars_of(out).items())}]
            )
    return rendered


def vars_of(rec: Any) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in rec.__slots__}


CHILD = """
import json, sys
sys.modules["asyncpg.pgproto.pgproto"] = None  # import fails: ImportError
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import uuid
from kalshi_data.kalshi import parse
assert parse._CUUID is uuid.UUID, parse._CUUID
import test_parse_memos as t
print(json.dumps(t._render(t._frames())))
"""


def test_without_the_accelerator_the_parser_gives_equal_results():
    assert parse._CUUID is not uuid.UUID  # this process has asyncpg's C parser
    here = _render(_frames())
    assert any(r[0] == "dead" for r in here)
    assert any(r[0] == "DeltaRec" for r in here)
    assert any(r[0] == "TradeRec" for r in here)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(child.stdout) == here


def test_both_uuid_parsers_agree_on_every_form():
    for form in UUID_FORMS:
        try:
            slow: object = uuid.UUID(form)
        except ValueError:
            slow = ValueError
        try:
            fast: object = parse._uuid_of(form)
        except ValueError:
            fast = ValueError
        assert fast == slow, form


def test_memos_fill_on_use_and_clear_empties_them_all():
    parse.MEMOS.clear()
    assert set(parse.MEMOS.sizes().values()) == {0}
    for f in _frames():
        parse.parse_frame(f)
    sizes = parse.MEMOS.sizes()
    assert sizes["tickers"] == 1
    assert sizes["prices"] >= 1
    assert sizes["signed"] == 1
    assert sizes["counts"] == 1
    assert sizes["uuids"] >= 1  # market ids only; trade ids are never remembered
    parse.MEMOS.clear()
    assert set(parse.MEMOS.sizes().values()) == {0}
    # Parsing still works from empty memos (the careful path refills them).
    again = _render(_frames()[:2])
    assert again[0][0] == "DeltaRec"
    assert parse.MEMOS.sizes()["tickers"] == 1


def test_a_memo_stops_growing_at_its_bound():
    memos = parse.Memos(max_entries=2)
    saved = parse.MEMOS
    parse.MEMOS = memos
    try:
        for price in ("0.1100", "0.2200", "0.3300"):
            parse._memo_price(price)
    finally:
        parse.MEMOS = saved
    assert list(memos.prices) == ["0.1100", "0.2200"]
