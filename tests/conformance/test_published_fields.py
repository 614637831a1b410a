"""Frames and REST objects written from Kalshi's published field lists parse as documented.

Sources (docs/protocol-core.md, "Conformance"): AsyncAPI ``asyncapi.yaml`` message payloads
(required and optional ``msg`` fields, enums), OpenAPI 3.13 schemas (``Market``, ``Trade``,
``GetMarketOrderbookResponse``, ``FixedPointDollars``), and the docs' examples. Every channel
and REST object the gatherer uses is here: required fields only, every optional field, every
enum value; unknown extra fields are ignored; an unknown message type or a missing required
field is a dead letter.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from kalshi_data.kalshi.parse import (
    DeadLetter,
    market_from_rest,
    orderbook_from_rest,
    parse_frame,
    trade_from_rest,
)
from kalshi_data.kalshi.rest import BadResponse
from kalshi_data.records import (
    DeltaRec,
    LifecycleRec,
    MarketRec,
    SnapshotRec,
    TickerRec,
    TradeRec,
)
from kalshi_data.tools.audit import parse_cutoff

MID = "9b0f6b43-5b68-4f9f-9f02-4a2d1d6f0c11"
TID = "d91bc706-ee49-470d-82d8-11418bda6fed"
TS_MS = 1_669_149_841_000

# AsyncAPI payloads: (frame type, required msg, optional msg fields, record type).
SNAPSHOT_REQ = {"market_ticker": "FED-23DEC-T3.00", "market_id": MID}
SNAPSHOT_OPT = {
    "yes_dollars_fp": [["0.0800", "300.00"], ["0.2200", "333.00"]],
    "no_dollars_fp": [["0.5400", "20.00"], ["0.5600", "146.00"]],
}
DELTA_REQ = {
    "market_ticker": "FED-23DEC-T3.00",
    "market_id": MID,
    "price_dollars": "0.9600",
    "delta_fp": "-54.00",
    "side": "yes",
    "ts_ms": TS_MS,
}
DELTA_OPT = {"client_order_id": "abc", "subaccount": 1, "ts": "2022-11-22T20:44:01Z"}
TICKER_REQ = {
    "market_id": MID,
    "market_ticker": "FED-23DEC-T3.00",
    "price_dollars": "0.4800",
    "yes_bid_dollars": "0.4500",
    "yes_ask_dollars": "0.5300",
    "volume_fp": "33896.00",
    "open_interest_fp": "20422.00",
    "dollar_volume": 16948,
    "dollar_open_interest": 10211,
    "yes_bid_size_fp": "300.00",
    "yes_ask_size_fp": "150.00",
    "last_trade_size_fp": "25.00",
    "ts": 1_669_149_841,
    "ts_ms": TS_MS,
    "time": "2022-11-22T20:44:01Z",
}
TRADE_REQ = {
    "trade_id": TID,
    "market_ticker": "HIGHNY-22DEC23-B53.5",
    "yes_price_dollars": "0.3600",
    "no_price_dollars": "0.6400",
    "count_fp": "136.00",
    "taker_side": "no",
    "taker_outcome_side": "no",
    "taker_book_side": "ask",
    "is_block_trade": False,
    "ts": 1_669_149_841,
    "ts_ms": TS_MS,
}
#: market_lifecycle_v2 ``event_type`` enum, and the fields each may carry.
LIFECYCLE_EVENTS: dict[str, dict[str, Any]] = {
    "created": {
        "open_ts": 1_669_149_841,
        "close_ts": 1_669_249_841,
        "additional_metadata": {
            "name": "n",
            "title": "t",
            "yes_sub_title": "y",
            "no_sub_title": "n",
            "rules_primary": "r",
            "rules_secondary": "",
            "can_close_early": True,
            "event_ticker": "INXD-23SEP14",
            "expected_expiration_ts": 1_669_249_841,
            "strike_type": "greater",
            "floor_strike": 4487,
        },
        "exchange_index": 0,
        "price_level_structure": "linear_cent",
        "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}],
    },
    "activated": {"is_deactivated": False},
    "deactivated": {"is_deactivated": True},
    "close_date_updated": {"close_ts": 1_669_249_841},
    "determined": {
        "determination_ts": 1_669_249_841,
        "result": "yes",
        "settlement_value": "1.0000",
    },
    "settled": {"settled_ts": 1_669_249_841},
    "price_level_structure_updated": {
        "price_level_structure": "deci_cent",
        "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0010"}],
    },
    "metadata_updated": {"strike_type": "between", "floor_strike": 1, "cap_strike": 2},
}
EVENT_LIFECYCLE_REQ = {
    "event_ticker": "INXD-23SEP14",
    "exchange_index": 0,
    "title": "S&P",
    "subtitle": "",
    "collateral_return_type": "MECNET",
    "series_ticker": "INXD",
}


def frame(frame_type: str, msg: dict[str, Any], **env: Any) -> bytes:
    return orjson.dumps({"type": frame_type, "sid": 2, "seq": 3, **env, "msg": msg})


@pytest.mark.parametrize(
    ("frame_type", "required", "optional", "record"),
    [
        ("orderbook_snapshot", SNAPSHOT_REQ, SNAPSHOT_OPT, SnapshotRec),
        ("orderbook_delta", DELTA_REQ, DELTA_OPT, DeltaRec),
        ("ticker", TICKER_REQ, {}, TickerRec),
        ("trade", TRADE_REQ, {}, TradeRec),
        (
            "event_lifecycle",
            EVENT_LIFECYCLE_REQ,
            {"strike_date": 1, "strike_period": ""},
            LifecycleRec,
        ),
        (
            "event_fee_update",
            {"event_ticker": "INXD-23SEP14"},
            {"fee_type_override": "quadratic", "fee_multiplier_override": 1.5},
            LifecycleRec,
        ),
    ],
)
def test_required_and_optional_fields_parse(
    frame_type: str, required: dict[str, Any], optional: dict[str, Any], record: type
) -> None:
    """Required fields alone, and with every optional field, give the record; extra unknown
    fields (in msg and envelope) are ignored (kept verbatim in lifecycle payloads)."""
    only = parse_frame(frame(frame_type, required))
    full = parse_frame(frame(frame_type, {**required, **optional}))
    extra = parse_frame(
        frame(frame_type, {**required, **optional, "brand_new_field": [1]}, future_key=True)
    )
    assert isinstance(only, record), only
    assert isinstance(full, record), full
    if isinstance(extra, LifecycleRec):
        # Lifecycle rows keep the whole msg as their payload: an unknown field is kept, not
        # refused (the record's identity fields are unchanged).
        assert isinstance(full, LifecycleRec)
        assert (extra.kind, extra.ticker, extra.event_type) == (
            full.kind,
            full.ticker,
            full.event_type,
        )
        assert orjson.loads(extra.payload)["brand_new_field"] == [1]
    else:
        assert extra == full


@pytest.mark.parametrize("missing", sorted(set(DELTA_REQ) - {"market_id", "ts_ms"}))
def test_missing_required_delta_field_is_a_dead_letter(missing: str) -> None:
    """A delta without a required field is a dead letter naming the field."""
    msg = {k: v for k, v in DELTA_REQ.items() if k != missing}
    out = parse_frame(frame("orderbook_delta", msg))
    assert isinstance(out, DeadLetter)
    assert missing in out.reason


@pytest.mark.parametrize(
    "missing",
    sorted(
        set(TRADE_REQ)
        - {"taker_side", "taker_outcome_side", "taker_book_side", "is_block_trade", "ts"}
    ),
)
def test_missing_required_trade_field_is_a_dead_letter(missing: str) -> None:
    """A trade without a required identity/price/count/time field is a dead letter."""
    msg = {k: v for k, v in TRADE_REQ.items() if k != missing}
    if missing == "ts_ms":
        msg.pop("ts")
    out = parse_frame(frame("trade", msg))
    assert isinstance(out, DeadLetter)


@pytest.mark.parametrize("side", ["yes", "no"])
def test_delta_side_enum(side: str) -> None:
    """``side`` is ``yes`` or ``no``; anything else is a dead letter."""
    out = parse_frame(frame("orderbook_delta", {**DELTA_REQ, "side": side}))
    assert isinstance(out, DeltaRec)
    assert out.side == side
    assert isinstance(
        parse_frame(frame("orderbook_delta", {**DELTA_REQ, "side": "bid"})), DeadLetter
    )


@pytest.mark.parametrize(("outcome", "book"), [("yes", "bid"), ("no", "ask")])
def test_trade_direction_enums(outcome: str, book: str) -> None:
    """``taker_outcome_side`` yes|no with ``taker_book_side`` bid|ask (bid is yes, ask is no)."""
    out = parse_frame(
        frame("trade", {**TRADE_REQ, "taker_outcome_side": outcome, "taker_book_side": book})
    )
    assert isinstance(out, TradeRec)
    assert (out.taker_outcome_side, out.taker_book_side) == (outcome, book)


@pytest.mark.parametrize("channel_type", ["market_lifecycle_v2", "multivariate_market_lifecycle"])
@pytest.mark.parametrize("event_type", sorted(LIFECYCLE_EVENTS))
def test_every_lifecycle_event_type(channel_type: str, event_type: str) -> None:
    """Every ``event_type`` of the enum, with its fields, on both lifecycle channels (the
    multivariate payload is ``allOf`` the market_lifecycle_v2 one)."""
    msg = {"market_ticker": "INXD-23SEP14-B4487", "event_type": event_type}
    msg.update(copy.deepcopy(LIFECYCLE_EVENTS[event_type]))
    out = parse_frame(frame(channel_type, msg))
    assert isinstance(out, LifecycleRec)
    assert (out.kind, out.ticker, out.event_type) == ("market", msg["market_ticker"], event_type)
    assert orjson.loads(out.payload) == msg


@pytest.mark.parametrize(
    "frame_type", ["fill", "market_position", "user_order", "multivariate_lookup", "ticker_v2", "x"]
)
def test_unknown_or_unused_message_types_are_dead_letters(frame_type: str) -> None:
    """Message types the gatherer does not record (private channels, removed ones, unknown
    ones) become dead letters, never records and never an exception."""
    out = parse_frame(frame(frame_type, {"market_ticker": "A"}))
    assert isinstance(out, DeadLetter)
    assert "unsupported message type" in out.reason


def test_empty_book_side_keys_are_omitted() -> None:
    """A snapshot side's key is omitted when that side is empty: an empty side, not an error."""
    out = parse_frame(
        frame("orderbook_snapshot", {**SNAPSHOT_REQ, "yes_dollars_fp": [["0.10", "1.00"]]})
    )
    assert isinstance(out, SnapshotRec)
    assert out.no == ()


@pytest.mark.parametrize("price", ["0.56", "0.5600", "0.560000"])
def test_fixed_point_dollars_up_to_six_decimals(price: str) -> None:
    """``FixedPointDollars``: up to 6 decimals (trailing zeros are the same price)."""
    out = parse_frame(frame("orderbook_delta", {**DELTA_REQ, "price_dollars": price}))
    assert isinstance(out, DeltaRec)
    assert out.price == 5600


# -- REST objects (OpenAPI 3.13) ---------------------------------------------------------------

MARKET_REQ: dict[str, Any] = {
    "ticker": "FED-23DEC-T3.00",
    "event_ticker": "FED-23DEC",
    "market_type": "binary",
    "yes_sub_title": "y",
    "no_sub_title": "n",
    "created_time": "2023-11-01T00:00:00Z",
    "updated_time": "2023-11-02T00:00:00Z",
    "open_time": "2023-11-01T00:00:00Z",
    "close_time": "2023-12-13T19:00:00Z",
    "latest_expiration_time": "2023-12-20T19:00:00Z",
    "settlement_timer_seconds": 300,
    "status": "active",
    "yes_bid_dollars": "0.4500",
    "yes_bid_size_fp": "300.00",
    "yes_ask_dollars": "0.5300",
    "yes_ask_size_fp": "150.00",
    "no_bid_dollars": "0.4700",
    "no_ask_dollars": "0.5500",
    "last_price_dollars": "0.4800",
    "volume_fp": "10.00",
    "volume_24h_fp": "1.00",
    "result": "",
    "can_close_early": True,
    "open_interest_fp": "5.00",
    "notional_value_dollars": "1.0000",
    "previous_yes_bid_dollars": "0.4400",
    "previous_yes_ask_dollars": "0.5400",
    "previous_price_dollars": "0.4700",
    "settlement_bounds_type": "default",
    "expiration_value": "",
    "rules_primary": "r",
    "rules_secondary": "",
    "price_level_structure": "linear_cent",
    "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}],
}
MARKET_OPT: dict[str, Any] = {
    "title": "t",
    "subtitle": "s",
    "expected_expiration_time": "2023-12-13T20:00:00Z",
    "expiration_time": "2023-12-13T20:00:00Z",
    "settlement_value_dollars": "1.0000",
    "settlement_ts": "2023-12-14T00:00:00Z",
    "strike_type": "greater",
    "floor_strike": 3.0,
    "mve_collection_ticker": "KXMVECOLLECTION",
    "mve_selected_legs": [
        {
            "event_ticker": "E",
            "market_ticker": "E-1",
            "side": "yes",
            "yes_settlement_value_dollars": "1.0000",
        }
    ],
    "is_provisional": False,
}
MARKET_STATUSES = (
    "initialized",
    "inactive",
    "active",
    "closed",
    "determined",
    "disputed",
    "amended",
    "finalized",
)


@pytest.mark.parametrize("status", MARKET_STATUSES)
def test_rest_market_every_status(status: str) -> None:
    """The ``Market`` object with required fields, every optional one, each ``status``."""
    only = market_from_rest({**MARKET_REQ, "status": status})
    full = market_from_rest({**MARKET_REQ, **MARKET_OPT, "status": status, "new_field": 1})
    assert isinstance(only, MarketRec)
    assert isinstance(full, MarketRec)
    assert full.status == status
    assert orjson.loads(full.data)["new_field"] == 1  # kept verbatim in data, not refused


def test_rest_market_without_ticker_is_a_dead_letter() -> None:
    """``ticker`` is required."""
    out = market_from_rest({k: v for k, v in MARKET_REQ.items() if k != "ticker"})
    assert isinstance(out, DeadLetter)


@pytest.mark.parametrize(
    "created", ["2026-01-01T00:01:57Z", "2026-01-01T00:01:57.667Z", "2026-01-01T00:01:57.667166Z"]
)
def test_rest_trade_created_time_precisions(created: str) -> None:
    """``Trade.created_time`` (date-time, microseconds in practice) floors to the millisecond."""
    obj = {
        "trade_id": TID,
        "ticker": "KXA-1",
        "count_fp": "1.00",
        "yes_price_dollars": "0.4100",
        "no_price_dollars": "0.5900",
        "taker_outcome_side": "yes",
        "taker_book_side": "bid",
        "created_time": created,
        "is_block_trade": False,
    }
    out = trade_from_rest(obj)
    assert isinstance(out, TradeRec)
    assert out.exchange_ts_us % 1000 == 0


def test_rest_orderbook_fp() -> None:
    """``GetMarketOrderbookResponse.orderbook_fp``: ``yes_dollars``/``no_dollars`` bids."""
    out = orderbook_from_rest(
        "FED-23DEC-T3.00",
        {
            "yes_dollars": [["0.4000", "5.00"], ["0.4200", "13.00"]],
            "no_dollars": [["0.5000", "1.00"]],
        },
    )
    assert isinstance(out, SnapshotRec)
    assert out.yes == ((4000, 500), (4200, 1300))
    assert out.no == ((5000, 100),)


def test_historical_trade_as_documented() -> None:
    """``GET /historical/trades`` items (docs example: trade_id, ticker, count_fp, the two
    prices, created_time, is_block_trade) parse as the same trade as ``/markets/trades``."""
    obj = {
        "trade_id": TID,
        "ticker": "KXA-1",
        "count_fp": "10.00",
        "yes_price_dollars": "0.5600",
        "no_price_dollars": "0.4400",
        "created_time": "2023-11-07T05:31:56Z",
        "is_block_trade": True,
    }
    out = trade_from_rest(obj)
    assert isinstance(out, TradeRec)
    assert out.exchange_ts_us == 1_699_335_116_000_000
    assert out.is_block_trade


def test_historical_cutoff_as_documented() -> None:
    """``GET /historical/cutoff``: three required date-times; the audit reads
    ``trades_created_ts`` and refuses a body without it."""
    body = {
        "market_settled_ts": "2023-11-07T05:31:56Z",
        "trades_created_ts": "2023-11-07T05:31:56Z",
        "orders_updated_ts": "2023-11-07T05:31:56Z",
    }
    assert parse_cutoff(body) == 1_699_335_116_000_000
    with pytest.raises(BadResponse):
        parse_cutoff({k: v for k, v in body.items() if k != "trades_created_ts"})
