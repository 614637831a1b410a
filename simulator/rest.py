"""REST market-data endpoints under ``/trade-api/v2`` (kalshi-protocol.md §4, §5).

Historical partition (docs.kalshi.com "Historical Data"): trades created before the cutoff
(``RestContext.historical_cutoff_us``; None = no partition, ``GET /historical/cutoff`` reports the
epoch) leave ``GET /markets/trades`` and are listed by ``GET /historical/trades`` instead, paged the
same way. Both need no authentication (the spec's ``security: []``).

Authentication where the OpenAPI spec (3.13) marks it: ``GET /markets/{ticker}/orderbook`` and
``GET /markets/orderbooks`` need the three signed KALSHI-ACCESS headers (401 otherwise, unless
``orderbook_auth`` is off); the other market-data GETs need none. A token bucket per client (its
KALSHI-ACCESS-KEY header when present, else its address) answers ``429 {"error": "too many
requests"}`` without Retry-After. Admin-armed bursts of 429/5xx come first.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from kalshi_data.resilience import TokenBucket
from simulator import shapes
from simulator.auth import AuthRefused, PublicKey, verify
from simulator.catalog import Market
from simulator.config import SimConfig
from simulator.errors import SimulatorError
from simulator.faults import RestFaults
from simulator.fixed import rfc3339_us
from simulator.market import Exchange, TradeRecord

PREFIX = "/trade-api/v2"
#: ``GET /markets?status=`` values (OpenAPI 3.13 ``MarketStatusQuery``: ``paused`` included).
STATUS_FILTERS = ("unopened", "open", "paused", "closed", "settled")
#: Paths the OpenAPI spec marks as authenticated (``security: kalshiAccess*``).
AUTH_PATHS = (f"{PREFIX}/markets/orderbooks",)
AUTH_SUFFIX = "/orderbook"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RestContext:
    """What the REST handlers read: exchange state, config, faults, buckets."""

    exchange: Exchange
    config: SimConfig
    faults: RestFaults = field(default_factory=RestFaults)
    paused: bool = False
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    requests: int = 0
    limited: int = 0
    #: Accepted API keys (set by the server) for the endpoints that need a signature.
    keys: Mapping[str, PublicKey] = field(default_factory=dict)
    unauthorized: int = 0
    #: Trades with ``created_us`` before this are historical (None = none are).
    historical_cutoff_us: int | None = None

    def is_historical(self, created_us: int) -> bool:
        """Whether a trade created at ``created_us`` has left the live listing."""
        cutoff = self.historical_cutoff_us
        return cutoff is not None and created_us < cutoff


class BadRequest(SimulatorError):
    """A query parameter was out of range; answered with HTTP 400."""


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message, "service": "exchange"}}, status)


def encode_cursor(kind: str, n: int) -> str:
    """Opaque cursor text for position ``n`` of listing ``kind``."""
    return base64.urlsafe_b64encode(f"{kind}:{n}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None, default: int) -> int:
    """Position from a cursor made by :func:`encode_cursor` (``default`` when empty)."""
    if not cursor:
        return default
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        got_kind, _, n = raw.partition(":")
        pos = int(n)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("invalid cursor") from None
    if got_kind != kind:
        raise BadRequest("invalid cursor")
    return pos


def _int(req: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _list_param(req: web.Request, name: str) -> list[str] | None:
    values = [v for raw in req.query.getall(name, []) for v in raw.split(",") if v]
    return values or None


def _bool(req: web.Request, name: str) -> bool:
    return req.query.get(name, "false").lower() in ("true", "1")


def _page(items: Iterator[tuple[int, Any]], limit: int, kind: str) -> tuple[list[Any], str]:
    """Take ``limit`` items; the cursor points after the last one if another exists."""
    out: list[Any] = []
    last = -1
    for pos, item in items:
        if len(out) == limit:
            return out, encode_cursor(kind, last)
        out.append(item)
        last = pos
    return out, ""


def trade_obj(msg: dict[str, Any], created_us: int) -> dict[str, Any]:
    """REST Trade object (§4) from the trade's WebSocket msg; ``created_time`` in microseconds
    (Kalshi's REST trades carry ``"...T15:01:57.667166Z"``, the WS trade ``ts_ms``)."""
    return {
        "trade_id": msg["trade_id"],
        "ticker": msg["market_ticker"],
        "count_fp": msg["count_fp"],
        "yes_price_dollars": msg["yes_price_dollars"],
        "no_price_dollars": msg["no_price_dollars"],
        "taker_side": msg["taker_side"],
        "taker_outcome_side": msg["taker_outcome_side"],
        "taker_book_side": msg["taker_book_side"],
        "created_time": rfc3339_us(created_us),
        "is_block_trade": msg["is_block_trade"],
    }


def orderbook_fp(m: Market, depth: int = 0) -> dict[str, Any]:
    """``{"yes_dollars": [[p, q], ...], "no_dollars": [...]}``, ascending (best bid last)."""
    return {"yes_dollars": m.book.levels("yes", depth), "no_dollars": m.book.levels("no", depth)}


class RestApi:
    """The handlers; one instance per simulator."""

    def __init__(self, ctx: RestContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """Static paths before dynamic ones: aiohttp matches in registration order."""
        p = PREFIX
        return [
            web.get(f"{p}/exchange/status", self.exchange_status),
            web.get(f"{p}/markets", self.markets),
            web.get(f"{p}/markets/trades", self.trades),
            web.get(f"{p}/historical/cutoff", self.historical_cutoff),
            web.get(f"{p}/historical/trades", self.historical_trades),
            web.get(f"{p}/markets/orderbooks", self.orderbooks),
            web.get(f"{p}/markets/{{ticker}}", self.market),
            web.get(f"{p}/markets/{{ticker}}/orderbook", self.orderbook),
            web.get(f"{p}/events", self.events),
            web.get(f"{p}/events/{{event_ticker}}", self.event),
            web.get(f"{p}/series", self.series_list),
            web.get(f"{p}/series/{{series_ticker}}", self.series),
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth, then faults, then the token bucket, then the handler; 400 for bad parameters."""
        if not request.path.startswith(PREFIX + "/"):
            return await handler(request)
        self.ctx.requests += 1
        for gate in (self._unauthorized, self._forced_fault, self._rate_limited):
            refused = gate(request)
            if refused is not None:
                return refused
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """401 for an unsigned request to an order-book path (OpenAPI marks them authenticated)."""
        ctx = self.ctx
        path = request.path
        guarded = path in AUTH_PATHS or (
            path.startswith(f"{PREFIX}/markets/") and path.endswith(AUTH_SUFFIX)
        )
        if not (ctx.config.orderbook_auth and guarded):
            return None
        try:
            verify(
                request.headers,
                request.method,
                path,
                ctx.keys,
                time.time_ns() // 1_000_000,
                int(ctx.config.auth_skew_s * 1000),
            )
        except AuthRefused as exc:
            ctx.unauthorized += 1
            return _json(
                {"error": {"code": "unauthorized", "message": exc.reason, "service": "auth"}},
                401,
            )
        return None

    def _forced_fault(self, _request: web.Request) -> web.Response | None:
        """The next injected status (``/admin/rest_faults``), if one is queued."""
        forced = self.ctx.faults.next_status()
        if forced == 429:
            return _json({"error": "too many requests"}, 429)
        if forced is not None:
            return _error(forced, "internal_server_error", "injected fault")
        return None

    def _rate_limited(self, request: web.Request) -> web.Response | None:
        """429 when the caller's token bucket (per key, else per address) is empty."""
        ctx = self.ctx
        if ctx.config.rest_tokens_per_s <= 0:
            return None
        client = request.headers.get("KALSHI-ACCESS-KEY") or (request.remote or "")
        bucket = ctx.buckets.get(client)
        if bucket is None:
            bucket = ctx.buckets[client] = TokenBucket(
                ctx.config.rest_tokens_per_s, ctx.config.rest_bucket_tokens
            )
        if bucket.try_acquire(ctx.config.rest_cost):
            return None
        ctx.limited += 1
        return _json({"error": "too many requests"}, 429)

    async def exchange_status(self, _request: web.Request) -> web.Response:
        """``GET /exchange/status``."""
        return _json({"exchange_active": True, "trading_active": not self.ctx.paused})

    def _market_filter(self, request: web.Request) -> Callable[[Market], bool]:
        status = request.query.get("status") or None
        if status is not None and status not in STATUS_FILTERS:
            raise BadRequest(f"status must be one of {', '.join(STATUS_FILTERS)}")
        event = request.query.get("event_ticker") or None
        series = request.query.get("series_ticker") or None
        mve = request.query.get("mve_filter") or None
        if mve is not None and mve not in ("only", "exclude"):
            raise BadRequest("mve_filter must be only or exclude")
        events = self.ctx.exchange.events

        def keep(m: Market) -> bool:
            if status is not None and m.status_filter != status:
                return False
            if mve is not None and (m.mve_collection is not None) != (mve == "only"):
                return False
            if event is not None and m.event_ticker != event:
                return False
            return series is None or events[m.event_ticker].series_ticker == series

        return keep

    async def markets(self, request: web.Request) -> web.Response:
        """``GET /markets``: creation order, so markets created while paging come last."""
        limit = _int(request, "limit", 100, 1, 1000)
        start = decode_cursor("m", request.query.get("cursor"), -1) + 1
        keep = self._market_filter(request)
        ex = self.ctx.exchange
        tickers = _list_param(request, "tickers")
        source: Iterable[Market]
        if tickers is not None:
            chosen = {ex.markets[t].index for t in tickers if t in ex.markets}
            source = (ex.market_list[i] for i in sorted(chosen) if i >= start)
        else:
            source = (ex.market_list[i] for i in range(start, len(ex.market_list)))
        items = ((m.index, m) for m in source if keep(m))
        page, cursor = _page(items, limit, "m")
        return _json({"markets": [shapes.market_obj(m) for m in page], "cursor": cursor})

    async def market(self, request: web.Request) -> web.Response:
        """``GET /markets/{ticker}``."""
        m = self.ctx.exchange.markets.get(request.match_info["ticker"])
        if m is None:
            return _error(404, "not_found", "market not found")
        return _json({"market": shapes.market_obj(m)})

    async def orderbook(self, request: web.Request) -> web.Response:
        """``GET /markets/{ticker}/orderbook`` (``depth`` 0 or negative = all levels)."""
        m = self.ctx.exchange.markets.get(request.match_info["ticker"])
        if m is None:
            return _error(404, "not_found", "market not found")
        depth = _int(request, "depth", 0, -(2**31), 100)
        return _json({"orderbook_fp": orderbook_fp(m, max(depth, 0))})

    async def orderbooks(self, request: web.Request) -> web.Response:
        """``GET /markets/orderbooks?tickers=A,B``."""
        tickers = _list_param(request, "tickers")
        if tickers is None:
            raise BadRequest("tickers is required")
        markets = self.ctx.exchange.markets
        books = [
            {"ticker": t, "orderbook_fp": orderbook_fp(markets[t])} for t in tickers if t in markets
        ]
        return _json({"orderbooks": books})

    async def trades(self, request: web.Request) -> web.Response:
        """``GET /markets/trades``: newest first; ``min_ts``/``max_ts`` Unix seconds; only
        trades from the historical cutoff on."""
        return self._trades(request, historical=False)

    async def historical_trades(self, request: web.Request) -> web.Response:
        """``GET /historical/trades``: the trades created before the cutoff, paged alike."""
        return self._trades(request, historical=True)

    async def historical_cutoff(self, _request: web.Request) -> web.Response:
        """``GET /historical/cutoff``: one cutoff for trades, markets and orders (RFC 3339)."""
        cutoff = rfc3339_us(self.ctx.historical_cutoff_us or 0)
        return _json(
            {
                "market_settled_ts": cutoff,
                "trades_created_ts": cutoff,
                "orders_updated_ts": cutoff,
            }
        )

    def _trades(self, request: web.Request, *, historical: bool) -> web.Response:
        kind = "h" if historical else "t"
        limit = _int(request, "limit", 100, 1, 1000)
        before = decode_cursor(kind, request.query.get("cursor"), 2**62)
        ticker = request.query.get("ticker") or None
        min_ms = _int(request, "min_ts", 0, 0, 2**40) * 1000
        max_ms = _int(request, "max_ts", 2**40, 0, 2**40) * 1000 + 999
        block = request.query.get("is_block_trade")
        block_only = None if block is None or block == "" else block.lower() in ("true", "1")
        is_historical = self.ctx.is_historical

        def matches() -> Iterator[tuple[int, TradeRecord]]:
            for rec in reversed(self.ctx.exchange.trades):
                if rec.num >= before:
                    continue
                if is_historical(rec.created_us) != historical:
                    continue
                msg = rec.msg
                if ticker is not None and msg["market_ticker"] != ticker:
                    continue
                if not min_ms <= msg["ts_ms"] <= max_ms:
                    continue
                if block_only is not None and bool(msg["is_block_trade"]) != block_only:
                    continue
                yield rec.num, rec

        # The cursor holds the last trade number returned; the next page takes smaller ones.
        page, cursor = _page(matches(), limit, kind)
        return _json({"trades": [trade_obj(r.msg, r.created_us) for r in page], "cursor": cursor})

    def _event_status_ok(self, ev_markets: list[str], status: str | None) -> bool:
        if status is None:
            return True
        markets = self.ctx.exchange.markets
        return any(markets[t].status_filter == status for t in ev_markets)

    async def events(self, request: web.Request) -> web.Response:
        """``GET /events`` (limit ≤ 200, default 200)."""
        limit = _int(request, "limit", 200, 1, 200)
        start = decode_cursor("e", request.query.get("cursor"), -1) + 1
        nested = _bool(request, "with_nested_markets")
        status = request.query.get("status") or None
        if status is not None and status not in STATUS_FILTERS:
            raise BadRequest("status must be one of unopened, open, closed, settled")
        series = request.query.get("series_ticker") or None
        ex = self.ctx.exchange
        items = (
            (ev.index, ev)
            for ev in ex.event_list[start:]
            if not ev.mve  # multivariate events are not listed here (/events/multivariate)
            and (series is None or ev.series_ticker == series)
            and self._event_status_ok(ev.markets, status)
        )
        page, cursor = _page(items, limit, "e")
        out = [
            shapes.event_obj(
                ev, [shapes.market_obj(ex.markets[t]) for t in ev.markets] if nested else None
            )
            for ev in page
        ]
        return _json({"events": out, "cursor": cursor})

    async def event(self, request: web.Request) -> web.Response:
        """``GET /events/{event_ticker}`` (``with_nested_markets``)."""
        ex = self.ctx.exchange
        ev = ex.events.get(request.match_info["event_ticker"])
        if ev is None:
            return _error(404, "not_found", "event not found")
        markets = [shapes.market_obj(ex.markets[t]) for t in ev.markets]
        nested = markets if _bool(request, "with_nested_markets") else None
        return _json({"event": shapes.event_obj(ev, nested), "markets": markets})

    async def series_list(self, request: web.Request) -> web.Response:
        """``GET /series`` (``category`` filter)."""
        category = request.query.get("category") or None
        out = [
            shapes.series_obj(s)
            for s in self.ctx.exchange.series.values()
            if category is None or s.category == category
        ]
        return _json({"series": out})

    async def series(self, request: web.Request) -> web.Response:
        """``GET /series/{series_ticker}``."""
        s = self.ctx.exchange.series.get(request.match_info["series_ticker"])
        if s is None:
            return _error(404, "not_found", "series not found")
        return _json({"series": shapes.series_obj(s)})
