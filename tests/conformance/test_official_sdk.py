"""The simulator checked with Kalshi's official Python SDK (issue 11, "Done when").

SDK: ``kalshi_python_sync`` 3.2.0, the package docs.kalshi.com/sdks/python/quickstart names
("The old kalshi-python package is deprecated. Please use kalshi_python_sync or
kalshi_python_async"); 3.2.0 is the only version the package index here serves (the newer
PyPI releases, 3.29 on, need Python 3.13). Reference spec: Kalshi's OpenAPI 3.13.0
(``openapi.yaml``, [OA] in docs/protocol-core.md, whose "Official SDK check" has the table).

Every request goes through the SDK's own client: its ``Configuration`` (host = the simulator's
REST base), its ``KalshiAuth`` RSA-PSS signing, its path and query building. Responses whose
SDK models accept today's fields (exchange status, series) are read through the models. The
rest use the SDK's ``*_without_preload_content`` variants (same request, raw body): the body
must carry every field the spec requires, and the SDK model's own validation of that body may
fail only on the fields listed below, each a documented disagreement between SDK 3.2.0 and the
current API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from simulator import SimConfig, Simulator

sdk = pytest.importorskip(
    "kalshi_python_sync",
    reason="official Kalshi SDK kalshi_python_sync not installed (pip install -e '.[dev]')",
)

KEY_ID = "sdk-check-key"
T = TypeVar("T")


def names(text: str) -> frozenset[str]:
    """Field names from a space-separated list (as the spec's ``required`` arrays read)."""
    return frozenset(text.split())


# --- OpenAPI 3.13.0 ``required`` lists (components.schemas) ---------------------------------
SPEC_MARKET_REQUIRED = names(
    "ticker event_ticker market_type yes_sub_title no_sub_title created_time updated_time"
    " open_time close_time latest_expiration_time settlement_timer_seconds status"
    " notional_value_dollars yes_bid_dollars yes_ask_dollars no_bid_dollars no_ask_dollars"
    " yes_bid_size_fp yes_ask_size_fp last_price_dollars previous_yes_bid_dollars"
    " previous_yes_ask_dollars previous_price_dollars volume_fp volume_24h_fp liquidity_dollars"
    " open_interest_fp result can_close_early fractional_trading_enabled expiration_value"
    " rules_primary rules_secondary price_level_structure price_ranges"
)
SPEC_TRADE_REQUIRED = names(
    "trade_id ticker count_fp yes_price_dollars no_price_dollars taker_side created_time"
)
# EventData also lists ``product_metadata``, but marks it ``x-omitempty`` (nullable object):
# the server leaves it out when empty, so its absence is conformant.
SPEC_EVENT_REQUIRED = names(
    "event_ticker series_ticker sub_title title collateral_return_type mutually_exclusive"
    " available_on_brokers"
)
SPEC_SERIES_REQUIRED = names(
    "ticker frequency title category tags settlement_sources contract_url contract_terms_url"
    " fee_type fee_multiplier additional_prohibitions"
)
SPEC_MARKET_STATUS = names(
    "initialized inactive active closed determined disputed amended finalized"
)

# --- Where SDK 3.2.0's models disagree with the current API (docs/protocol-core.md) ----------
#: Required by SDK 3.2.0 ``Market``, absent from current responses: integer cents and counts
#: removed on 2026-03-12 (docs.kalshi.com fixed_point_migration; changelog), and fields the
#: OpenAPI 3.13 ``Market`` no longer requires (``response_price_units``, ``tick_size``:
#: optional, deprecated) or no longer lists (``category``, ``risk_limit_cents``).
SDK_MARKET_LEGACY = names(
    "yes_bid yes_ask no_bid no_ask last_price volume volume_24h open_interest notional_value"
    " previous_yes_bid previous_yes_ask previous_price liquidity response_price_units category"
    " risk_limit_cents tick_size"
)
#: SDK 3.2.0's ``Market.status`` enum; OpenAPI 3.13 adds inactive, disputed, amended,
#: finalized (and drops settled), so a paused or finalized market fails the SDK's validator.
SDK_MARKET_STATUS = names("initialized active closed settled determined")
#: SDK 3.2.0 ``Trade`` requires the integer ``price``/``count``/``yes_price``/``no_price``
#: removed on 2026-03-12; OpenAPI 3.13 ``Trade`` has ``count_fp`` and the ``_dollars`` prices.
SDK_TRADE_LEGACY = frozenset({"price", "count", "yes_price", "no_price"})
#: SDK 3.2.0 ``EventData`` requires ``category``; OpenAPI 3.13 has it optional and deprecated
#: ("use series-level category instead"); the simulator leaves it out.
SDK_EVENT_LEGACY = frozenset({"category"})
#: SDK 3.2.0 ``GetMarketOrderbookResponse`` requires the legacy ``orderbook`` key; OpenAPI 3.13
#: requires ``orderbook_fp`` (``OrderbookCountFp``: ``yes_dollars``/``no_dollars`` string
#: pairs), which the SDK's own ``Orderbook`` model accepts.
SDK_ORDERBOOK_LEGACY = frozenset({"orderbook"})


def _key_pair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture
async def sdk_sim(tmp_path: Path) -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator that accepts one RSA key made here; yields it and the private PEM."""
    private, public = _key_pair()
    sim = Simulator(
        SimConfig(
            seed=11,
            markets=300,
            mve_markets=40,
            rate=2000,
            workdir=tmp_path,
            key_id=KEY_ID,
            public_key_pem=public,
            lifecycle_share=0.02,
            rest_tokens_per_s=0,
        )
    )
    await sim.start()
    try:
        yield sim, private
    finally:
        await sim.stop()


def client(sim: Simulator, private_pem: str | None, key_id: str = KEY_ID) -> Any:
    """The SDK's ``KalshiClient`` on the simulator; signed when a private key is given."""
    cfg = sdk.Configuration(host=sim.rest_url)
    if private_pem is not None:
        cfg.api_key_id = key_id
        cfg.private_key_pem = private_pem
    return sdk.KalshiClient(cfg)


async def call(fn: Callable[[], T]) -> T:
    """Run one blocking SDK call off the event loop the simulator runs on."""
    return await asyncio.to_thread(fn)


async def raw(method: Callable[..., Any], expect: int = 200, **params: Any) -> Any:
    """An SDK ``*_without_preload_content`` call: the SDK builds and signs the request; the
    simulator's status must be ``expect``; its JSON body is returned."""

    def run() -> tuple[int, bytes]:
        resp = method(**params, _request_timeout=10)
        try:
            return resp.status, resp.data
        finally:
            resp.release_conn()

    got, body = await call(run)
    assert got == expect, body[:300]
    return json.loads(body)


def sdk_errors(model: Any, obj: dict[str, Any]) -> set[str]:
    """Top-level fields the SDK model rejects in ``obj`` (empty: it validates)."""
    try:
        model.from_dict(obj)
    except ValueError as exc:  # pydantic's ValidationError
        return {str(e["loc"][0]) for e in exc.errors()}  # type: ignore[attr-defined]
    return set()


async def wait_for(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_models_that_fit_today_read_exchange_status_and_series(sdk_sim):
    """Exchange status and series go through the SDK's models, and say what the simulator holds."""
    sim, private = sdk_sim
    c = client(sim, private)
    status = await call(c.get_exchange_status)
    assert isinstance(status, sdk.ExchangeStatus)
    assert (status.exchange_active, status.trading_active) == (True, True)
    sim.pause()
    assert (await call(c.get_exchange_status)).trading_active is False
    listed = await call(c.get_series_list)
    assert isinstance(listed, sdk.GetSeriesListResponse)
    assert {s.ticker for s in listed.series} == set(sim.exchange.series)
    one = next(iter(sim.exchange.series.values()))
    got = (await call(lambda: c.get_series(series_ticker=one.ticker))).series
    assert (got.ticker, got.category, got.tags) == (one.ticker, one.category, one.tags)
    by_category = await call(lambda: c.get_series_list(category=one.category))
    assert {s.category for s in by_category.series} == {one.category}
    wire = await raw(c.get_series_list_without_preload_content)
    for obj in wire["series"]:
        assert set(obj) >= SPEC_SERIES_REQUIRED, SPEC_SERIES_REQUIRED - set(obj)
        assert sdk_errors(sdk.Series, obj) == set()


async def test_current_objects_carry_the_spec_fields_and_differ_from_sdk_only_as_documented(
    sdk_sim,
):
    """Markets, trades, events and the book: every OpenAPI 3.13 required field is there, and
    the SDK 3.2.0 models reject them only for the documented legacy fields."""
    sim, private = sdk_sim
    c = client(sim, private)
    await wait_for(lambda: len(sim.exchange.trades) >= 200)
    sim.pause()

    markets = (await raw(c.get_markets_without_preload_content, limit=1000))["markets"]
    assert len(markets) == len(sim.exchange.market_list)
    failing: set[str] = set()
    for m in markets:
        assert set(m) >= SPEC_MARKET_REQUIRED, SPEC_MARKET_REQUIRED - set(m)
        assert m["status"] in SPEC_MARKET_STATUS
        errors = sdk_errors(sdk.Market, m)
        if m["status"] in SDK_MARKET_STATUS:
            assert "status" not in errors, m["status"]
        failing |= errors - {"status"}
    assert failing == SDK_MARKET_LEGACY
    # Rejected by the SDK's status enum though the spec lists them (paused = inactive).
    assert {m["status"] for m in markets} - SDK_MARKET_STATUS
    one = await raw(c.get_market_without_preload_content, ticker=markets[0]["ticker"])
    assert one["market"] == markets[0]
    with pytest.raises(ValueError, match="response_price_units"):  # SDK models vs today's markets
        await call(lambda: c.get_markets(limit=5))

    trades = (await raw(c.get_trades_without_preload_content, limit=1000))["trades"]
    assert len(trades) == min(1000, len(sim.exchange.trades))
    for t in trades:
        assert set(t) >= SPEC_TRADE_REQUIRED, SPEC_TRADE_REQUIRED - set(t)
        assert sdk_errors(sdk.Trade, t) == SDK_TRADE_LEGACY

    events = (await raw(c.get_events_without_preload_content, limit=200))["events"]
    assert events
    for ev in events:
        assert set(ev) >= SPEC_EVENT_REQUIRED, SPEC_EVENT_REQUIRED - set(ev)
        assert sdk_errors(sdk.EventData, ev) == SDK_EVENT_LEGACY
    first = events[0]["event_ticker"]
    single = await raw(
        c.get_event_without_preload_content, event_ticker=first, with_nested_markets=True
    )
    assert single["event"]["event_ticker"] == first
    nested = {m["ticker"] for m in single["event"]["markets"]}
    assert (
        nested
        == {m["ticker"] for m in single["markets"]}
        == set(sim.exchange.events[first].markets)
    )

    m = max(sim.exchange.market_list, key=lambda x: len(x.book.yes) + len(x.book.no))
    book = await raw(c.get_market_orderbook_without_preload_content, ticker=m.ticker)
    assert set(book) == {"orderbook_fp"}
    assert sdk_errors(sdk.GetMarketOrderbookResponse, book) == SDK_ORDERBOOK_LEGACY
    levels = sdk.Orderbook.from_dict(book["orderbook_fp"])  # the level shape agrees
    assert levels.yes_dollars == m.book.levels("yes")
    assert levels.no_dollars == m.book.levels("no")
    assert levels.yes_dollars or levels.no_dollars


async def test_sdk_query_parameters_filter_as_documented(sdk_sim):
    """status, tickers, event_ticker, series_ticker, mve_filter, ticker/min_ts/max_ts and
    events' status, built by the SDK, select exactly what the simulator holds."""
    sim, private = sdk_sim
    c = client(sim, private)
    await wait_for(lambda: len(sim.exchange.trades) >= 300)
    sim.pause()
    ex = sim.exchange

    async def tickers(**params: Any) -> set[str]:
        body = await raw(c.get_markets_without_preload_content, limit=1000, **params)
        assert body["cursor"] == ""
        return {m["ticker"] for m in body["markets"]}

    mve = {m.ticker for m in ex.market_list if m.mve_collection is not None}
    assert len(mve) >= 40  # combos are also created while running
    assert await tickers(mve_filter="only") == mve
    assert not (await tickers(mve_filter="exclude")) & mve
    for status in ("unopened", "open", "paused", "closed", "settled"):
        want = {m.ticker for m in ex.market_list if m.status_filter == status}
        assert await tickers(status=status) == want, status
    assert await tickers(status="open", mve_filter="exclude") == {
        m.ticker for m in ex.market_list if m.status_filter == "open" and m.mve_collection is None
    }
    three = [ex.market_list[i].ticker for i in (7, 3, 150)]
    assert await tickers(tickers=",".join(three)) == set(three)
    ev = next(e for e in ex.event_list if not e.mve and len(e.markets) > 1)
    assert await tickers(event_ticker=ev.event_ticker) == set(ev.markets)
    in_series = await tickers(series_ticker=ev.series_ticker)
    assert set(ev.markets) <= in_series
    assert {ex.events[ex.markets[t].event_ticker].series_ticker for t in in_series} == {
        ev.series_ticker
    }
    await raw(c.get_markets_without_preload_content, 400, status="bogus")

    busiest: dict[str, int] = {}
    for rec in ex.trades:
        busiest[rec.msg["market_ticker"]] = busiest.get(rec.msg["market_ticker"], 0) + 1
    ticker = max(busiest, key=lambda t: busiest[t])
    secs = sorted({rec.msg["ts_ms"] // 1000 for rec in ex.trades})
    lo, hi = secs[len(secs) // 4], secs[3 * len(secs) // 4]
    body = await raw(
        c.get_trades_without_preload_content, limit=1000, ticker=ticker, min_ts=lo, max_ts=hi
    )
    want_ids = [
        rec.msg["trade_id"]
        for rec in reversed(ex.trades)
        if rec.msg["market_ticker"] == ticker and lo <= rec.msg["ts_ms"] // 1000 <= hi
    ]
    assert [t["trade_id"] for t in body["trades"]] == want_ids  # newest first
    window = await raw(c.get_trades_without_preload_content, limit=1000, min_ts=lo, max_ts=lo)
    assert window["trades"]
    assert {t["created_time"][:19] for t in window["trades"]} == {
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(lo))
    }

    open_events = await raw(c.get_events_without_preload_content, limit=200, status="open")
    for e in open_events["events"]:
        assert any(
            ex.markets[t].status_filter == "open" for t in ex.events[e["event_ticker"]].markets
        )


async def test_sdk_cursor_paging_returns_every_item_once(sdk_sim):
    """Paging /markets, /markets/trades and /events with the SDK's cursor ends (empty cursor)
    and returns every item exactly once while the simulator keeps trading and listing."""
    sim, private = sdk_sim
    c = client(sim, private)
    ex = sim.exchange
    await wait_for(lambda: len(ex.trades) >= 500)

    async def page_all(method: Callable[..., Any], key: str, ident: str, limit: int) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            body = await raw(method, **params)
            seen += [item[ident] for item in body[key]]
            pages += 1
            cursor = body["cursor"]
            if not cursor:
                break
            assert pages < 1000, "paging did not end"
        assert pages > 2
        return seen

    before_m = {m.ticker for m in ex.market_list}
    markets = await page_all(c.get_markets_without_preload_content, "markets", "ticker", 37)
    assert len(markets) == len(set(markets))
    assert before_m <= set(markets) <= {m.ticker for m in ex.market_list}

    before_t = {rec.msg["trade_id"] for rec in ex.trades}
    trades = await page_all(c.get_trades_without_preload_content, "trades", "trade_id", 97)
    assert len(trades) == len(set(trades))
    assert before_t <= set(trades) <= {rec.msg["trade_id"] for rec in ex.trades}

    before_e = {e.event_ticker for e in ex.event_list if not e.mve}
    events = await page_all(c.get_events_without_preload_content, "events", "event_ticker", 31)
    assert len(events) == len(set(events))
    assert before_e <= set(events) <= {e.event_ticker for e in ex.event_list if not e.mve}


async def test_orderbook_signed_by_the_sdk_is_accepted_unsigned_is_401(sdk_sim):
    """Issue 11 item 8: the SDK's KalshiAuth signature opens the order book; no signature or
    a signature from another key is refused with 401; public endpoints need none."""
    sim, private = sdk_sim
    sim.pause()
    m = max(sim.exchange.market_list, key=lambda x: len(x.book.yes))
    signed = client(sim, private)
    body = await raw(signed.get_market_orderbook_without_preload_content, ticker=m.ticker, depth=2)
    assert body["orderbook_fp"]["yes_dollars"] == m.book.levels("yes", 2)

    unsigned = client(sim, None)
    refused = await raw(unsigned.get_market_orderbook_without_preload_content, 401, ticker=m.ticker)
    assert refused["error"]["code"] == "unauthorized"
    with pytest.raises(sdk.UnauthorizedException) as info:
        await call(lambda: unsigned.get_market_orderbook_with_http_info(ticker=m.ticker))
    assert info.value.status == 401
    other_key, _ = _key_pair()
    forged = client(sim, other_key)
    await raw(forged.get_market_orderbook_without_preload_content, 401, ticker=m.ticker)
    assert sim.rest.unauthorized == 3

    assert (await call(unsigned.get_exchange_status)).exchange_active is True
    public = await raw(unsigned.get_market_without_preload_content, ticker=m.ticker)
    assert public["market"]["ticker"] == m.ticker
