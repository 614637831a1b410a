"""Frame and REST parsing: doc examples parse, bad input becomes a reason, nothing raises."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from kalshi_data.kalshi.parse import (
    DATA_PARSERS,
    MAX_FRAME_BYTES,
    DeadLetter,
    Frame,
    decode_frame,
    event_from_rest,
    market_from_rest,
    orderbook_from_rest,
    parse_frame,
    series_from_rest,
    trade_from_rest,
)
from kalshi_data.records import (
    DeltaRec,
    EventRec,
    LifecycleRec,
    MarketRec,
    SeriesRec,
    SnapshotRec,
    TickerRec,
    TradeRec,
)

# kalshi-protocol.md elides uuids as "9b0f6b43-..." / "d91bc706-..."; the copies below complete
# them to valid uuids and are otherwise verbatim.
MARKET_ID = "9b0f6b43-5b2f-4e8a-9c1d-2e3f4a5b6c7d"
TRADE_ID = "d91bc706-ee49-470d-82d8-11418bda6fed"

# kalshi-protocol.md §3.5 (orderbook_delta channel): snapshot and delta.
DOC_SNAPSHOT = (
    '{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"market_id":"' + MARKET_ID + '",'
    '"yes_dollars_fp":[["0.0800","300.00"],["0.2200","333.00"]],'
    '"no_dollars_fp":[["0.5400","20.00"],["0.5600","146.00"]]}}'
)
DOC_DELTA = (
    '{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"market_id":"' + MARKET_ID + '",'
    '"price_dollars":"0.9600","delta_fp":"-54.00","side":"yes","ts":"2022-11-22T20:44:01Z",'
    '"ts_ms":1669149841000}}'
)
# kalshi-protocol.md §3.6 (ticker channel).
DOC_TICKER = (
    '{"type":"ticker","sid":11,"msg":{"market_id":"' + MARKET_ID + '",'
    '"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.4800",'
    '"yes_bid_dollars":"0.4500","yes_ask_dollars":"0.5300","volume_fp":"33896.00",'
    '"open_interest_fp":"20422.00","dollar_volume":16948,"dollar_open_interest":10211,'
    '"yes_bid_size_fp":"300.00","yes_ask_size_fp":"150.00","last_trade_size_fp":"25.00",'
    '"ts":1669149841,"ts_ms":1669149841000,"time":"2022-11-22T20:44:01Z"}}'
)
# kalshi-protocol.md §3.7 (trade channel).
DOC_TRADE = (
    '{"type":"trade","sid":11,"seq":2,"msg":{"trade_id":"' + TRADE_ID + '",'
    '"market_ticker":"HIGHNY-22DEC23-B53.5","yes_price_dollars":"0.3600",'
    '"no_price_dollars":"0.6400","count_fp":"136.00","taker_side":"no",'
    '"taker_outcome_side":"no","taker_book_side":"ask","is_block_trade":false,'
    '"ts":1669149841,"ts_ms":1669149841000}}'
)
# kalshi-protocol.md §3.10 (market_lifecycle_v2), verbatim.
DOC_LIFECYCLE = (
    '{"type":"market_lifecycle_v2","sid":13,"seq":4,"msg":{"market_ticker":"INXD-23SEP14-B4487",'
    '"event_type":"price_level_structure_updated","price_level_structure":"deci_cent",'
    '"price_ranges":[{"start":"0.0000","end":"1.0000","step":"0.0010"}]}}'
)
# kalshi-protocol.md §3.2 (responses), verbatim.
DOC_CONTROL = [
    '{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}',
    '{"id":102,"sid":2,"seq":7,"type":"unsubscribed"}',
    '{"id":123,"sid":456,"seq":222,"type":"ok","msg":{"market_tickers":["MARKET-1","MARKET-2",'
    '"MARKET-3"]}}',
    '{"id":3,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},{"channel":"ticker","sid":2}]}',
    '{"id":123,"type":"error","msg":{"code":7,"msg":"Unknown subscription ID"}}',
]


def test_doc_snapshot_parses() -> None:
    """The §3.5 snapshot example becomes a ws SnapshotRec with exact levels."""
    rec = parse_frame(DOC_SNAPSHOT)
    assert isinstance(rec, SnapshotRec)
    assert rec.ticker == "FED-23DEC-T3.00"
    assert rec.market_id == uuid.UUID(MARKET_ID)
    assert rec.source == "ws"
    assert rec.yes == ((800, 30000), (2200, 33300))
    assert rec.no == ((5400, 2000), (5600, 14600))
    assert (rec.sid, rec.seq) == (2, 2)


def test_doc_delta_parses() -> None:
    """The §3.5 delta example becomes a DeltaRec timed by ts_ms, with a signed delta."""
    rec = parse_frame(DOC_DELTA)
    assert isinstance(rec, DeltaRec)
    assert (rec.side, rec.price, rec.delta) == ("yes", 9600, -5400)
    assert rec.exchange_ts_us == 1669149841000 * 1000
    assert (rec.sid, rec.seq) == (2, 3)


def test_doc_ticker_parses() -> None:
    """The §3.6 ticker example becomes a TickerRec with every field converted."""
    rec = parse_frame(DOC_TICKER)
    assert isinstance(rec, TickerRec)
    assert (rec.price, rec.yes_bid, rec.yes_ask) == (4800, 4500, 5300)
    assert (rec.volume, rec.open_interest) == (3389600, 2042200)
    assert (rec.dollar_volume, rec.dollar_open_interest) == (16948, 10211)
    assert (rec.yes_bid_size, rec.yes_ask_size, rec.last_trade_size) == (30000, 15000, 2500)
    assert rec.sid == 11


def test_doc_trade_parses() -> None:
    """The §3.7 trade example becomes a TradeRec."""
    rec = parse_frame(DOC_TRADE)
    assert isinstance(rec, TradeRec)
    assert rec.trade_id == uuid.UUID(TRADE_ID)
    assert rec.ticker == "HIGHNY-22DEC23-B53.5"
    assert (rec.yes_price, rec.no_price, rec.count) == (3600, 6400, 13600)
    assert (rec.taker_outcome_side, rec.taker_book_side, rec.taker_side) == ("no", "ask", "no")
    assert rec.is_block_trade is False
    assert rec.exchange_ts_us == 1669149841000000


def test_doc_lifecycle_parses() -> None:
    """The §3.10 example becomes a market LifecycleRec with canonical payload."""
    rec = parse_frame(DOC_LIFECYCLE)
    assert isinstance(rec, LifecycleRec)
    assert (rec.kind, rec.ticker, rec.event_type) == (
        "market",
        "INXD-23SEP14-B4487",
        "price_level_structure_updated",
    )
    assert rec.payload.startswith('{"event_type":')
    assert orjson.loads(rec.payload)["price_level_structure"] == "deci_cent"


def test_event_and_fee_lifecycle() -> None:
    """event_lifecycle and event_fee_update become event/fee LifecycleRecs keyed by event."""
    ev = parse_frame(
        '{"type":"event_lifecycle","sid":13,"seq":5,"msg":{"event_ticker":"INXD-23SEP14",'
        '"exchange_index":0,"title":"t","subtitle":"s","collateral_return_type":"",'
        '"series_ticker":"INXD"}}'
    )
    assert isinstance(ev, LifecycleRec)
    assert (ev.kind, ev.ticker, ev.event_type) == ("event", "INXD-23SEP14", "event_lifecycle")
    fee = parse_frame(
        '{"type":"event_fee_update","sid":13,"seq":6,"msg":{"event_ticker":"INXD-23SEP14",'
        '"fee_type_override":null,"fee_multiplier_override":0.5}}'
    )
    assert isinstance(fee, LifecycleRec)
    assert (fee.kind, fee.event_type) == ("fee", "event_fee_update")


def test_doc_control_frames_decode() -> None:
    """The §3.2 response examples decode to envelopes (control frames are not records)."""
    for text in DOC_CONTROL:
        frame = parse_frame(text)
        assert isinstance(frame, Frame), text
    unsub = decode_frame(DOC_CONTROL[1])
    assert isinstance(unsub, Frame)
    assert (unsub.id, unsub.sid, unsub.seq, unsub.type) == (102, 2, 7, "unsubscribed")


def _reason(text: str | bytes) -> str:
    out = parse_frame(text)
    assert isinstance(out, DeadLetter), out
    return out.reason


def _mutate(doc: str, **changes: Any) -> str:
    obj = orjson.loads(doc)
    for key, value in changes.items():
        if value is None:
            obj["msg"].pop(key, None)
        else:
            obj["msg"][key] = value
    return orjson.dumps(obj).decode()


def test_rejections_name_the_field() -> None:
    """Bad fields become dead letters whose reason names the field and the problem."""
    assert "price_dollars" in _reason(_mutate(DOC_DELTA, price_dollars="1.5000"))
    assert "delta_fp" in _reason(_mutate(DOC_DELTA, delta_fp="-54.001"))
    assert "side" in _reason(_mutate(DOC_DELTA, side="maybe"))
    assert "market_ticker" in _reason(_mutate(DOC_DELTA, market_ticker="fed-lower"))
    assert "trade_id" in _reason(_mutate(DOC_TRADE, trade_id="d91bc706-..."))
    assert "ts_ms" in _reason(_mutate(DOC_TRADE, ts_ms=1.5))
    assert "no ts_ms" in _reason(_mutate(DOC_TRADE, ts_ms=None, ts=None))
    assert "count_fp" in _reason(_mutate(DOC_TRADE, count_fp=136))
    assert "yes_dollars_fp" in _reason(_mutate(DOC_SNAPSHOT, yes_dollars_fp=[["0.1", "1", "2"]]))
    assert "repeats" in _reason(
        _mutate(DOC_SNAPSHOT, yes_dollars_fp=[["0.1", "1"], ["0.1000", "2"]])
    )
    assert "unsupported" in _reason('{"type":"fill","sid":1,"msg":{}}')
    assert "not an object" in _reason('{"type":"trade","sid":1,"seq":1,"msg":[]}')


def test_frame_level_rejections() -> None:
    """Non-JSON, NaN, non-objects, bad envelopes and oversize frames are dead letters."""
    assert "invalid JSON" in _reason('{"type":"ticker","msg":{"x":NaN}}')
    assert "invalid JSON" in _reason('{"type":"ticker","msg":{"x":Infinity}}')
    assert "not a JSON object" in _reason("[1,2]")
    assert "no valid type" in _reason('{"sid":1}')
    assert "seq must be an integer" in _reason('{"type":"trade","sid":1,"seq":"3","msg":{}}')
    assert "seq out of range" in _reason('{"type":"trade","sid":1,"seq":-1,"msg":{}}')
    big = b'{"type":"ticker","pad":"' + b"x" * MAX_FRAME_BYTES + b'"}'
    assert "exceeds" in _reason(big)
    assert "invalid JSON" in _reason("[" * 5000 + "]" * 5000)


def test_empty_side_and_zero_levels() -> None:
    """An omitted book side is empty; zero-count levels are dropped; order is normalised."""
    rec = parse_frame(
        _mutate(
            DOC_SNAPSHOT,
            no_dollars_fp=None,
            yes_dollars_fp=[["0.30", "1"], ["0.1", "0"], ["0.2", "2"]],
        )
    )
    assert isinstance(rec, SnapshotRec)
    assert rec.no == ()
    assert rec.yes == ((2000, 200), (3000, 100))


def test_duplicate_keys_tolerated() -> None:
    """A duplicated key keeps its last value instead of rejecting the frame."""
    text = DOC_DELTA.replace('"side":"yes"', '"side":"no","side":"yes"')
    rec = parse_frame(text)
    assert isinstance(rec, DeltaRec)
    assert rec.side == "yes"


def test_ticker_without_trade_price() -> None:
    """An empty ticker price (no trade yet) is None, not an error."""
    rec = parse_frame(_mutate(DOC_TICKER, price_dollars=""))
    assert isinstance(rec, TickerRec)
    assert rec.price is None


def test_rest_objects() -> None:
    """REST market, event, series, trade and orderbook objects become records."""
    market = market_from_rest(
        {
            "ticker": "FED-23DEC-T3.00",
            "event_ticker": "FED-23DEC",
            "status": "active",
            "updated_time": "2026-01-02T03:04:05.5Z",
            "yes_bid_dollars": "0.4500",
        }
    )
    assert isinstance(market, MarketRec)
    assert market.updated_time_us == 1767323045500000
    assert market.fields()["yes_bid_dollars"] == "0.4500"
    event = event_from_rest(
        {"event_ticker": "FED-23DEC", "series_ticker": "FED", "markets": [{"ticker": "X"}]}
    )
    assert isinstance(event, EventRec)
    assert "markets" not in orjson.loads(event.data)
    series = series_from_rest({"ticker": "FED", "title": "Fed"})
    assert isinstance(series, SeriesRec)
    trade = trade_from_rest(
        {
            "trade_id": TRADE_ID,
            "ticker": "FED-23DEC-T3.00",
            "count_fp": "2.00",
            "yes_price_dollars": "0.4000",
            "no_price_dollars": "0.6000",
            "taker_outcome_side": "yes",
            "taker_book_side": "bid",
            "created_time": "2022-11-22T20:44:01.250Z",
            "is_block_trade": False,
        }
    )
    assert isinstance(trade, TradeRec)
    assert trade.exchange_ts_us == 1669149841250000
    book = orderbook_from_rest(
        "FED-23DEC-T3.00", {"yes_dollars": [["0.4200", "13.00"]], "no_dollars": []}
    )
    assert isinstance(book, SnapshotRec)
    assert (book.source, book.yes, book.no) == ("rest", ((4200, 1300),), ())
    bad = market_from_rest({"ticker": "FED", "status": "active"})
    assert isinstance(bad, DeadLetter)
    assert "event_ticker missing" in bad.reason
    assert isinstance(market_from_rest(["not", "a", "dict"]), DeadLetter)


# -- properties: arbitrary input -> record or reason, never an exception ---------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
_FIELDS = sorted(
    {
        "market_ticker",
        "market_id",
        "price_dollars",
        "delta_fp",
        "side",
        "ts",
        "ts_ms",
        "time",
        "yes_dollars_fp",
        "no_dollars_fp",
        "trade_id",
        "yes_price_dollars",
        "no_price_dollars",
        "count_fp",
        "taker_side",
        "is_block_trade",
        "volume_fp",
        "dollar_volume",
        "event_ticker",
        "event_type",
        "yes_bid_dollars",
        "open_interest_fp",
        "market_tickers",
        "code",
        "msg",
        "channel",
        "sid",
    }
)
_field_value = st.one_of(
    _json,
    st.sampled_from(["0.4200", "136.00", "-54.00", "FED-23DEC-T3.00", MARKET_ID, "yes", "no"]),
    st.lists(st.lists(st.sampled_from(["0.4200", "1.00", "x", "2"]), max_size=3), max_size=3),
    st.integers(min_value=1669149841000, max_value=1669149841999),
)
_frames = st.fixed_dictionaries(
    {"type": st.sampled_from([*DATA_PARSERS, "subscribed", "unsubscribed", "ok", "error", "x"])},
    optional={
        "id": st.integers(min_value=-1, max_value=5) | _json,
        "sid": st.integers(min_value=-1, max_value=5) | _json,
        "seq": st.integers(min_value=-1, max_value=5) | _json,
        "msg": st.dictionaries(st.sampled_from(_FIELDS), _field_value, max_size=12) | _json,
    },
)


def _ok(out: object) -> bool:
    return isinstance(out, (DeadLetter, Frame)) or hasattr(out, "row")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Arbitrary bytes give a record, an envelope or a dead letter; never an exception."""
    assert _ok(parse_frame(data))


@given(_json)
def test_arbitrary_json_never_raises(value: Any) -> None:
    """Arbitrary JSON values give a record, an envelope or a dead letter."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return  # ints beyond 64 bits are not encodable by orjson; covered by text below
    assert _ok(parse_frame(text))


@settings(max_examples=300)
@given(_frames)
def test_arbitrary_frames_never_raise(frame: dict[str, Any]) -> None:
    """Frame-shaped JSON with plausible and implausible fields never raises."""
    try:
        text = orjson.dumps(frame).decode()
    except orjson.JSONEncodeError:
        text = repr(frame)
    out = parse_frame(text)
    assert _ok(out)
    if isinstance(out, DeadLetter):
        assert out.reason


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    """Arbitrary (even surrogate-laden) text never raises."""
    assert _ok(parse_frame(text))


@given(_json)
def test_arbitrary_rest_objects_never_raise(value: Any) -> None:
    """REST object parsers turn any JSON value into a record or a dead letter."""
    for fn in (market_from_rest, event_from_rest, series_from_rest, trade_from_rest):
        assert _ok(fn(value))
    assert _ok(orderbook_from_rest("T", value))


def test_issue11_six_decimal_prices_parse_and_subunit_dead_letters() -> None:
    """``"0.480000"`` parses like ``"0.4800"``; ``"0.480001"`` dead-letters with its own reason."""
    from kalshi_data.kalshi.fixedpoint import SUBUNIT_REASON
    from kalshi_data.kalshi.parse import DeadLetter, parse_frame
    from kalshi_data.records import DeltaRec

    def frame(price: str) -> bytes:
        return (
            b'{"type":"orderbook_delta","sid":1,"seq":2,"msg":{"market_ticker":"KXA-1",'
            b'"price_dollars":"%b","delta_fp":"5.00","side":"yes","ts_ms":1767225600000}}'
            % price.encode()
        )

    ok = parse_frame(frame("0.480000"))
    assert isinstance(ok, DeltaRec)
    assert ok.price == 4800
    bad = parse_frame(frame("0.480001"))
    assert isinstance(bad, DeadLetter)
    assert SUBUNIT_REASON in bad.reason
    assert "price_dollars" in bad.reason


def test_issue11_rest_trade_microseconds_share_the_ws_identity() -> None:
    """REST ``created_time`` carries µs, WS ``ts_ms``: both copies give the same row identity."""
    from kalshi_data.kalshi.fixedpoint import ms_floor_us
    from kalshi_data.kalshi.parse import parse_frame
    from kalshi_data.records import TradeRec

    tid = "6a0c1b5e-8f4e-4c1a-9b7e-2d3f4a5b6c7d"
    ws = parse_frame(
        b'{"type":"trade","sid":3,"seq":9,"msg":{"trade_id":"%b","market_ticker":"KXA-1",'
        b'"yes_price_dollars":"0.4100","no_price_dollars":"0.5900","count_fp":"1.00",'
        b'"taker_outcome_side":"yes","taker_book_side":"bid","ts":1767225717,'
        b'"ts_ms":1767225717667}}' % tid.encode()
    )
    rest = trade_from_rest(
        {
            "trade_id": tid,
            "ticker": "KXA-1",
            "yes_price_dollars": "0.4100",
            "no_price_dollars": "0.5900",
            "count_fp": "1.00",
            "taker_outcome_side": "yes",
            "taker_book_side": "bid",
            "created_time": "2026-01-01T00:01:57.667166Z",
            "is_block_trade": False,
        }
    )
    assert isinstance(ws, TradeRec)
    assert isinstance(rest, TradeRec)
    assert rest.exchange_ts_us == ws.exchange_ts_us == 1_767_225_717_667_000
    assert rest.row(0)[:10] == ws.row(0)[:10]
    assert ms_floor_us(1_767_225_717_667_999) == 1_767_225_717_667_000
