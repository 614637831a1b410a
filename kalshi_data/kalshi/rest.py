"""Kalshi REST client (kalshi-protocol.md §4, §5): rate-limited, retried, bounded, paginated.

Every request takes ``request_cost`` tokens from the shared :class:`TokenBucket` (Kalshi bills
reads at 10 tokens by default, §5), runs under a total timeout, reads at most ``max_body_bytes``
of (decompressed) body, and goes through the project's one retry loop
(:func:`kalshi_data.resilience.retry`): 429, 5xx and network errors are retried with full-jitter
backoff, everything else fails at once.

Exceptions::

    RestError (KalshiDataError; fields: status, path, code)
    ├── RestTransientError (TransientError)
    │   ├── RateLimited (429)
    │   └── ServerError (5xx)
    └── RestPermanentError (PermanentError)
        ├── ClientError (other 4xx)
        │   ├── NotFound (404)
        │   └── AuthError (401/403)
        ├── ResponseTooLarge
        └── BadResponse (not JSON, wrong shape, cursor loop)

Typed helpers return records (or a :class:`DeadLetter` for an object that does not validate),
never raw floats; :meth:`KalshiRest.get_json` and :meth:`KalshiRest.paginate` give raw JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from kalshi_data.errors import KalshiDataError, PermanentError, TransientError
from kalshi_data.kalshi.parse import (
    DeadLetter,
    event_from_rest,
    market_from_rest,
    orderbook_from_rest,
    series_from_rest,
    trade_from_rest,
)
from kalshi_data.kalshi.signer import Signer
from kalshi_data.records import EventRec, MarketRec, SeriesRec, SnapshotRec, TradeRec
from kalshi_data.resilience import CircuitBreaker, RetryPolicy, TokenBucket, retry

DEFAULT_BASE_URL = "https://external-api.kalshi.com/trade-api/v2"
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_BODY_BYTES = 32 << 20
#: Kalshi's default token cost of a request (§5).
DEFAULT_REQUEST_COST = 10.0
#: Basic tier read budget: 200 tokens/s (§5); capacity of one second of budget.
DEFAULT_BUCKET_RATE = 200.0
DEFAULT_BUCKET_CAPACITY = 200.0
DEFAULT_POLICY = RetryPolicy(base_s=0.25, cap_s=15.0, max_attempts=10, deadline_s=180.0)
#: Tickers per ``/markets/orderbooks`` request.
ORDERBOOKS_BATCH = 100

OnRetry = Callable[[int, BaseException, float], None]


class RestError(KalshiDataError):
    """A REST request failed; ``status`` is the HTTP status (0 when none)."""

    def __init__(self, message: str, *, status: int = 0, path: str = "", code: str = "") -> None:
        super().__init__(message, status=status, path=path, code=code)
        self.status = status
        self.path = path
        self.code = code


class RestTransientError(RestError, TransientError):
    """Worth retrying."""


class RateLimited(RestTransientError):
    """HTTP 429 ``{"error": "too many requests"}`` (no Retry-After header, §5)."""


class ServerError(RestTransientError):
    """HTTP 5xx."""


class RestPermanentError(RestError, PermanentError):
    """Retrying cannot help."""


class ClientError(RestPermanentError):
    """HTTP 4xx other than 429."""


class NotFound(ClientError):
    """HTTP 404 (unknown market, event or series)."""


class AuthError(ClientError):
    """HTTP 401/403: bad key or signature."""


class ResponseTooLarge(RestPermanentError):
    """The body exceeded ``max_body_bytes``."""


class BadResponse(RestPermanentError):
    """The body is not the JSON object expected (or pagination loops)."""


@dataclass(frozen=True, slots=True)
class ExchangeStatus:
    """``GET /exchange/status``."""

    exchange_active: bool
    trading_active: bool
    raw: Mapping[str, Any]


def _error_code(body: bytes) -> tuple[str, str]:
    """Kalshi's ``{"error": {"code", "message"}}`` or ``{"error": "..."}`` (§5), best effort."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str):
        return "", err[:200]
    if isinstance(err, dict):
        code, msg = err.get("code"), err.get("message")
        return (
            code[:100] if isinstance(code, str) else "",
            msg[:200] if isinstance(msg, str) else "",
        )
    return "", ""


def _status_error(status: int, path: str, body: bytes) -> RestError:
    code, msg = _error_code(body)
    text = f"GET {path}: HTTP {status}" + (f" {code}" if code else "") + (f": {msg}" if msg else "")
    cls: type[RestError]
    if status == 429:
        cls = RateLimited
    elif status >= 500:
        cls = ServerError
    elif status == 404:
        cls = NotFound
    elif status in {401, 403}:
        cls = AuthError
    else:
        cls = ClientError
    return cls(text, status=status, path=path, code=code)


def _query(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Query pairs: None dropped, bools as ``true``/``false``, lists repeated (form, explode)."""
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            out.append((key, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return out


class KalshiRest:
    """An async Kalshi REST client; use as ``async with KalshiRest(...) as rest``.

    Args:
        base_url: e.g. :data:`DEFAULT_BASE_URL` or a simulator's ``rest_url``.
        signer: signs every request when given (the order-book endpoints need it: OpenAPI 3.13).
        bucket: the token bucket shared by every REST caller of this process.
        policy: retry policy for 429 / 5xx / network errors.
        breaker: optional circuit breaker for the Kalshi REST dependency.
        timeout_s: total timeout of one attempt.
        max_body_bytes: larger (decompressed) bodies raise :class:`ResponseTooLarge`.
        request_cost: tokens per request.
        session: an aiohttp session to use (not closed by :meth:`close`); default: own one.
        on_retry: called ``(attempt, exc, delay_s)`` before each retry (metrics, logs).
        sleep: the retry loop's sleep (tests).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        signer: Signer | None = None,
        bucket: TokenBucket | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        breaker: CircuitBreaker | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_cost: float = DEFAULT_REQUEST_COST,
        session: aiohttp.ClientSession | None = None,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = urlsplit(self.base_url).path
        self._signer = signer
        self.bucket = bucket or TokenBucket(DEFAULT_BUCKET_RATE, DEFAULT_BUCKET_CAPACITY)
        self._policy = policy
        self._breaker = breaker
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_body = max_body_bytes
        self._cost = request_cost
        self._session = session
        self._own_session = session is None
        self._on_retry = on_retry
        self._sleep = sleep
        #: Requests sent (attempts, including retried ones) and responses by status class.
        self.requests_total = 0
        self.retries_total = 0

    async def __aenter__(self) -> KalshiRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._own_session = True
        return self._session

    # -- raw -----------------------------------------------------------------------------

    async def _read(self, resp: aiohttp.ClientResponse, path: str) -> bytes:
        length = resp.content_length
        if length is not None and length > self._max_body:
            raise ResponseTooLarge(
                f"GET {path}: body of {length} bytes exceeds {self._max_body}",
                status=resp.status,
                path=path,
            )
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > self._max_body:
                raise ResponseTooLarge(
                    f"GET {path}: body exceeds {self._max_body} bytes",
                    status=resp.status,
                    path=path,
                )
        return bytes(buf)

    async def _get_once(self, path: str, query: list[tuple[str, str]]) -> dict[str, Any]:
        await self.bucket.acquire(self._cost)
        headers = {"Accept": "application/json"}
        if self._signer is not None:
            headers.update(self._signer.auth_headers("GET", self._base_path + path))
        self.requests_total += 1
        session = self._get_session()
        async with session.get(
            self.base_url + path, params=query, headers=headers, timeout=self._timeout
        ) as resp:
            body = await self._read(resp, path)
            if resp.status >= 400:
                raise _status_error(resp.status, path, body)
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponse(
                f"GET {path}: body is not JSON", status=resp.status, path=path
            ) from None
        if not isinstance(obj, dict):
            raise BadResponse(
                f"GET {path}: body is not a JSON object", status=resp.status, path=path
            )
        return obj

    def _retry_hook(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries_total += 1
        if self._on_retry is not None:
            self._on_retry(attempt, exc, delay)

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``GET base_url + path`` -> the decoded JSON object, retried per the policy.

        Raises:
            RestError: a permanent failure, or a transient one the policy gave up on.
        """
        query = _query(params)
        return await retry(
            lambda: self._get_once(path, query),
            policy=self._policy,
            name=f"kalshi GET {path}",
            breaker=self._breaker,
            on_retry=self._retry_hook,
            sleep=self._sleep,
        )

    async def paginate(
        self, path: str, params: Mapping[str, Any] | None, key: str
    ) -> AsyncIterator[Any]:
        """Every item of ``page[key]`` over all pages, following ``cursor`` until ``""`` (§4).

        Raises:
            BadResponse: a page without a list under ``key``, or a repeated cursor.
        """
        base = dict(params or {})
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            query = dict(base)
            if cursor:
                query["cursor"] = cursor
            page = await self.get_json(path, query)
            items = page.get(key)
            if not isinstance(items, list):
                raise BadResponse(f"GET {path}: no list under {key!r}", status=200, path=path)
            for item in items:
                yield item
            nxt = page.get("cursor")
            if not isinstance(nxt, str) or not nxt:
                return
            if nxt in seen:
                raise BadResponse(f"GET {path}: cursor repeats", status=200, path=path)
            seen.add(nxt)
            cursor = nxt

    # -- typed helpers -------------------------------------------------------------------

    async def get_markets(
        self,
        status: str | None = None,
        *,
        event_ticker: str | None = None,
        series_ticker: str | None = None,
        tickers: Sequence[str] | None = None,
        limit: int = 1000,
        **filters: Any,
    ) -> AsyncIterator[MarketRec | DeadLetter]:
        """All markets matching the filters (``status`` in unopened/open/closed/settled)."""
        params = {
            "status": status,
            "event_ticker": event_ticker,
            "series_ticker": series_ticker,
            "tickers": ",".join(tickers) if tickers else None,
            "limit": limit,
            **filters,
        }
        async for item in self.paginate("/markets", params, "markets"):
            yield market_from_rest(item)

    async def get_market(self, ticker: str) -> MarketRec | DeadLetter:
        """One market. Raises :class:`NotFound` for an unknown ticker."""
        page = await self.get_json(f"/markets/{quote(ticker, safe='')}")
        return market_from_rest(page.get("market"))

    async def get_orderbook(self, ticker: str, depth: int = 0) -> SnapshotRec | DeadLetter:
        """A market's order book (``depth`` 0 = all levels) as a ``rest`` snapshot."""
        params = {"depth": depth} if depth > 0 else None
        page = await self.get_json(f"/markets/{quote(ticker, safe='')}/orderbook", params)
        return orderbook_from_rest(ticker, page.get("orderbook_fp"))

    async def get_orderbooks(self, tickers: Iterable[str]) -> list[SnapshotRec | DeadLetter]:
        """Order books of many markets (batched by :data:`ORDERBOOKS_BATCH`)."""
        wanted = list(tickers)
        out: list[SnapshotRec | DeadLetter] = []
        for i in range(0, len(wanted), ORDERBOOKS_BATCH):
            batch = wanted[i : i + ORDERBOOKS_BATCH]
            page = await self.get_json("/markets/orderbooks", {"tickers": batch})
            books = page.get("orderbooks")
            if not isinstance(books, list):
                raise BadResponse("GET /markets/orderbooks: no list under 'orderbooks'")
            for book in books:
                if not isinstance(book, dict) or not isinstance(book.get("ticker"), str):
                    out.append(
                        DeadLetter("rest orderbooks: item without ticker", orjson.dumps(book))
                    )
                    continue
                out.append(orderbook_from_rest(book["ticker"], book.get("orderbook_fp")))
        return out

    async def get_events(
        self,
        status: str | None = None,
        *,
        series_ticker: str | None = None,
        with_nested_markets: bool = False,
        limit: int = 200,
        **filters: Any,
    ) -> AsyncIterator[EventRec | DeadLetter]:
        """All events matching the filters (nested markets are not part of the records)."""
        params = {
            "status": status,
            "series_ticker": series_ticker,
            "with_nested_markets": with_nested_markets or None,
            "limit": limit,
            **filters,
        }
        async for item in self.paginate("/events", params, "events"):
            yield event_from_rest(item)

    async def get_series(self, **filters: Any) -> AsyncIterator[SeriesRec | DeadLetter]:
        """All series (``category``, ``tags``, ... as filters)."""
        async for item in self.paginate("/series", filters, "series"):
            yield series_from_rest(item)

    async def get_one_series(self, series_ticker: str) -> SeriesRec | DeadLetter:
        """One series. Raises :class:`NotFound` for an unknown ticker."""
        page = await self.get_json(f"/series/{quote(series_ticker, safe='')}")
        return series_from_rest(page.get("series"))

    async def get_trades(
        self,
        ticker: str | None = None,
        *,
        min_ts: int | None = None,
        max_ts: int | None = None,
        limit: int = 1000,
    ) -> AsyncIterator[TradeRec | DeadLetter]:
        """Public trades, optionally for one market and a Unix-seconds window."""
        params = {"ticker": ticker, "min_ts": min_ts, "max_ts": max_ts, "limit": limit}
        async for item in self.paginate("/markets/trades", params, "trades"):
            yield trade_from_rest(item)

    async def get_exchange_status(self) -> ExchangeStatus:
        """``/exchange/status``. Raises :class:`BadResponse` when the flags are missing."""
        page = await self.get_json("/exchange/status")
        active, trading = page.get("exchange_active"), page.get("trading_active")
        if not isinstance(active, bool) or not isinstance(trading, bool):
            raise BadResponse("GET /exchange/status: flags missing", path="/exchange/status")
        return ExchangeStatus(active, trading, page)
