"""Wire shapes: WebSocket ``msg`` objects (§3.5–§3.10) and REST objects (§4), built from state.

Pure functions from catalogue state to JSON-ready dicts; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from simulator.book import Side
from simulator.catalog import Event, Market, Series
from simulator.fixed import DOLLAR, dollars, fp, rfc3339, rfc3339_ms

Json = dict[str, Any]


def ticker_state(m: Market) -> tuple[int, ...]:
    """The fields a ``ticker`` frame reports; a change of this tuple means a new ticker frame."""
    bid = m.book.best("yes")
    no_bid = m.book.best("no")
    return (
        bid[0] if bid else 0,
        bid[1] if bid else 0,
        DOLLAR - no_bid[0] if no_bid else DOLLAR,
        no_bid[1] if no_bid else 0,
        m.last_price,
        m.last_size,
        m.volume,
        m.open_interest,
    )


# --- WebSocket msg objects -------------------------------------------------------------------


def snapshot_msg(m: Market, yes_scale: bool = False) -> Json:
    """``orderbook_snapshot`` msg; a side's key is omitted when that side is empty (§3.5).

    ``yes_scale`` (``use_yes_price``): NO-side levels priced on the YES leg (``1 - p``),
    ascending by that price."""
    msg: Json = {"market_ticker": m.ticker, "market_id": m.market_id}
    if m.book.yes:
        msg["yes_dollars_fp"] = m.book.levels("yes")
    if m.book.no:
        if yes_scale:
            no = m.book.no
            msg["no_dollars_fp"] = [[dollars(DOLLAR - p), fp(no[p])] for p in sorted(no)[::-1]]
        else:
            msg["no_dollars_fp"] = m.book.levels("no")
    return msg


def yes_scale_delta(body: bytes) -> bytes:
    """An ``orderbook_delta`` msg (JSON bytes) as sent under ``use_yes_price``: a NO-side
    change priced on the YES leg (``1 - p``); YES-side changes are the same bytes."""
    if b'"side":"no"' not in body:
        return body
    msg = orjson.loads(body)
    whole, _, frac = str(msg["price_dollars"]).partition(".")
    msg["price_dollars"] = dollars(DOLLAR - int(whole) * DOLLAR - int(frac.ljust(4, "0")[:4]))
    return orjson.dumps(msg)


def delta_msg(m: Market, side: Side, price: int, delta: int, ts_ms: int) -> Json:
    """``orderbook_delta`` msg with ``ts`` (RFC3339, deprecated) and ``ts_ms`` (§3.5)."""
    return {
        "market_ticker": m.ticker,
        "market_id": m.market_id,
        "price_dollars": dollars(price),
        "delta_fp": fp(delta),
        "side": side,
        "ts": rfc3339(ts_ms // 1000),
        "ts_ms": ts_ms,
    }


def ticker_msg(m: Market, ts_ms: int) -> Json:
    """``ticker`` msg with every required field (§3.6)."""
    bid, bid_size, ask, ask_size, last, last_size, volume, oi = m.ticker_state or ticker_state(m)
    return {
        "market_id": m.market_id,
        "market_ticker": m.ticker,
        "price_dollars": dollars(last),
        "yes_bid_dollars": dollars(bid),
        "yes_ask_dollars": dollars(ask),
        "volume_fp": fp(volume),
        "open_interest_fp": fp(oi),
        "dollar_volume": m.dollar_volume_units // 1_000_000,
        "dollar_open_interest": oi * (last or DOLLAR // 2) // 1_000_000,
        "yes_bid_size_fp": fp(bid_size),
        "yes_ask_size_fp": fp(ask_size),
        "last_trade_size_fp": fp(last_size),
        "ts": ts_ms // 1000,
        "ts_ms": ts_ms,
        "time": rfc3339_ms(ts_ms),
    }


def trade_msg(
    m: Market, trade_id: str, yes_price: int, count: int, taker: Side, block: bool, ts_ms: int
) -> Json:
    """``trade`` msg (§3.7); ``taker_book_side`` bid for a YES taker, ask for a NO taker."""
    return {
        "trade_id": trade_id,
        "market_ticker": m.ticker,
        "yes_price_dollars": dollars(yes_price),
        "no_price_dollars": dollars(DOLLAR - yes_price),
        "count_fp": fp(count),
        "taker_side": taker,
        "taker_outcome_side": taker,
        "taker_book_side": "bid" if taker == "yes" else "ask",
        "is_block_trade": block,
        "ts": ts_ms // 1000,
        "ts_ms": ts_ms,
    }


def price_ranges(m: Market) -> list[Json]:
    """One range covering the whole dollar on the market's tick grid."""
    return [{"start": "0.0000", "end": "1.0000", "step": dollars(m.tick)}]


def created_msg(m: Market, ev: Event) -> Json:
    """``market_lifecycle_v2`` ``created`` with ``additional_metadata`` (§3.10)."""
    meta: Json = {
        "name": m.title,
        "title": m.title,
        "yes_sub_title": m.yes_sub_title,
        "no_sub_title": m.no_sub_title,
        "rules_primary": rules_primary(m),
        "rules_secondary": "",
        "can_close_early": True,
        "event_ticker": ev.event_ticker,
        "expected_expiration_ts": m.expiration_ts,
        "strike_type": m.strike_type,
    }
    if m.floor_strike is not None:
        meta["floor_strike"] = m.floor_strike
    if m.cap_strike is not None:
        meta["cap_strike"] = m.cap_strike
    return {
        "market_ticker": m.ticker,
        "event_type": "created",
        "open_ts": m.open_ts,
        "close_ts": m.close_ts,
        "additional_metadata": meta,
        "price_level_structure": m.structure,
        "price_ranges": price_ranges(m),
    }


def lifecycle_msg(m: Market, event_type: str, **extra: Any) -> Json:
    """Any other ``market_lifecycle_v2`` msg: ``market_ticker``, ``event_type`` + its fields."""
    msg: Json = {"market_ticker": m.ticker, "event_type": event_type}
    msg.update(extra)
    return msg


def event_lifecycle_msg(ev: Event) -> Json:
    """``event_lifecycle`` msg (§3.10 item 2)."""
    return {
        "event_ticker": ev.event_ticker,
        "exchange_index": 0,
        "title": ev.title,
        "subtitle": ev.sub_title,
        "collateral_return_type": ev.collateral_return_type,
        "series_ticker": ev.series_ticker,
        "strike_date": ev.strike_date,
        "strike_period": "",
    }


# --- REST objects ----------------------------------------------------------------------------


def rules_primary(m: Market) -> str:
    """A plausible rules text."""
    return f"If {m.title} resolves {m.yes_sub_title}, the market resolves to Yes."


def market_obj(m: Market) -> Json:
    """The §4 Market object (current fixed-point fields; RFC3339 times)."""
    bid, bid_size, ask, ask_size, last, _ls, volume, oi = m.ticker_state or ticker_state(m)
    no_bid = m.book.best("no")
    obj: Json = {
        "ticker": m.ticker,
        "event_ticker": m.event_ticker,
        "market_type": "binary",
        "title": m.title,
        "subtitle": "",
        "yes_sub_title": m.yes_sub_title,
        "no_sub_title": m.no_sub_title,
        "created_time": rfc3339(m.created_ts),
        "updated_time": rfc3339(m.updated_ts),
        "open_time": rfc3339(m.open_ts),
        "close_time": rfc3339(m.close_ts),
        "expected_expiration_time": rfc3339(m.expiration_ts),
        "expiration_time": rfc3339(m.expiration_ts),
        "latest_expiration_time": rfc3339(m.expiration_ts + 7 * 86_400),
        "settlement_timer_seconds": 300,
        "status": m.status,
        "yes_bid_dollars": dollars(bid),
        "yes_bid_size_fp": fp(bid_size),
        "yes_ask_dollars": dollars(ask),
        "yes_ask_size_fp": fp(ask_size),
        "no_bid_dollars": dollars(no_bid[0] if no_bid else 0),
        "no_ask_dollars": dollars(DOLLAR - bid),
        "last_price_dollars": dollars(last),
        "volume_fp": fp(volume),
        "volume_24h_fp": fp(volume),
        "result": m.result,
        "can_close_early": True,
        "open_interest_fp": fp(oi),
        "notional_value_dollars": "1.0000",
        "previous_yes_bid_dollars": dollars(bid),
        "previous_yes_ask_dollars": dollars(ask),
        "previous_price_dollars": dollars(m.previous_price),
        "liquidity_dollars": "0.0000",  # OpenAPI 3.13: required, deprecated, always "0.0000"
        "settlement_bounds_type": "default",
        "expiration_value": "",
        "strike_type": m.strike_type,
        "rules_primary": rules_primary(m),
        "rules_secondary": "",
        "price_level_structure": m.structure,
        "price_ranges": price_ranges(m),
        "fractional_trading_enabled": m.fractional,
    }
    if m.floor_strike is not None:
        obj["floor_strike"] = m.floor_strike
    if m.cap_strike is not None:
        obj["cap_strike"] = m.cap_strike
    if m.settlement_value is not None:
        obj["settlement_value_dollars"] = dollars(m.settlement_value)
    if m.settled_ts is not None:
        obj["settlement_ts"] = rfc3339(m.settled_ts)
    if m.mve_collection is not None:
        obj["mve_collection_ticker"] = m.mve_collection
        obj["mve_selected_legs"] = m.mve_legs
    return obj


def event_obj(ev: Event, nested: list[Json] | None = None) -> Json:
    """The §4 Event object; ``markets`` only when nested markets were asked for."""
    obj: Json = {
        "event_ticker": ev.event_ticker,
        "series_ticker": ev.series_ticker,
        "sub_title": ev.sub_title,
        "title": ev.title,
        "collateral_return_type": ev.collateral_return_type,
        "mutually_exclusive": ev.mutually_exclusive,
        "available_on_brokers": False,  # OpenAPI 3.13 EventData: required
        "strike_date": rfc3339(ev.strike_date),
        "strike_period": "",
        "settlement_sources": [{"name": "Simulator", "url": "http://127.0.0.1/"}],
        "last_updated_ts": rfc3339(ev.updated_ts),
    }
    if nested is not None:
        obj["markets"] = nested
    return obj


def series_obj(s: Series) -> Json:
    """The §4 Series object."""
    return {
        "ticker": s.ticker,
        "frequency": s.frequency,
        "title": s.title,
        "category": s.category,
        "categories": [s.category],
        "tags": s.tags,
        "settlement_sources": [{"name": "Simulator", "url": "http://127.0.0.1/"}],
        "contract_url": "http://127.0.0.1/contract.pdf",
        "contract_terms_url": "http://127.0.0.1/terms.pdf",
        "fee_type": "quadratic",
        "fee_multiplier": 1,
        "additional_prohibitions": [],
    }
