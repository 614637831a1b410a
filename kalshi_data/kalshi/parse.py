"""Frames and REST objects into typed records, or a dead letter with a reason; never an exception.

Two steps for WebSocket frames (kalshi-protocol.md §3.2):

1. :func:`decode_frame`: size limit, orjson decode (``NaN``/``Infinity`` are not JSON and are
   rejected; duplicate keys keep the last value; nesting is bounded by orjson), envelope checks
   (``type``, ``id``, ``sid``, ``seq``) -> :class:`Frame`;
2. :func:`parse_data`: the ``msg`` of a data frame -> a record from :mod:`kalshi_data.records`.

The split lets :mod:`.wsproto` track sequence numbers from a sound envelope even when the payload
is bad (a bad payload is a dead letter, not a gap). :func:`parse_frame` does both.

REST objects (§4) go through :func:`market_from_rest`, :func:`event_from_rest`,
:func:`series_from_rest`, :func:`trade_from_rest` and :func:`orderbook_from_rest`.

Validation: exact fixed point (:mod:`.fixedpoint`), prices within [0, 1] $, counts bounded,
tickers matching :data:`TICKER_RE`, uuids parsed, strings and arrays bounded.

Speed (the gatherer runs every frame through here, ~50,000 a second): the envelope and the three
hot payloads (``orderbook_delta``, ``ticker``, ``trade``) have a fast path that looks values up in
bounded memos of values already validated (tickers, prices, counts, market ids) and accepts only
the plain form (``ts_ms`` an in-range int, sides ``yes``/``no``). Anything else, including any
value not yet in a memo, falls through to the careful readers below, which fill the memos and
write the dead letter's reason. The fast path therefore accepts exactly what the careful path
accepts and builds equal records (``tests/unit/kalshi/test_parse_fast.py`` checks this with
hypothesis); it only skips work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from kalshi_data.errors import KalshiDataError
from kalshi_data.kalshi.fixedpoint import (
    MAX_TS_US,
    MIN_TS_US,
    exchange_ts_us,
    ms_floor_us,
    parse_count,
    parse_price,
    rfc3339_to_us,
    s_to_us,
)
from kalshi_data.records import (
    DeltaRec,
    EventRec,
    LifecycleKind,
    LifecycleRec,
    MarketRec,
    Record,
    SeriesRec,
    SnapshotRec,
    TickerRec,
    TradeRec,
    canonical_json,
)

#: Largest accepted frame (the websockets default ``max_size``, reliability-notes §7).
MAX_FRAME_BYTES = 1 << 20
#: Largest number of price levels per book side (a price grid of 0.0001 $ has 10,001 levels).
MAX_LEVELS = 10_001
#: Largest accepted short string field (sides, statuses, event types).
MAX_SHORT_STR = 64
#: Tickers as Kalshi writes them (upper case; examples in kalshi-protocol.md §3.5-3.10).
TICKER_RE = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,127}")
#: A dead letter keeps at most this many raw bytes.
MAX_DEAD_LETTER_BYTES = MAX_FRAME_BYTES
_INT64_MAX = 2**63 - 1
#: The fast path takes frames up to this many bytes or characters (a character is at most 4
#: UTF-8 bytes, so a str this long is within :data:`MAX_FRAME_BYTES`); longer ones are checked.
_FAST_FRAME_LIMIT = MAX_FRAME_BYTES // 4
#: Entries per memo table (prices, counts and market ids repeat endlessly on the wire).
_MEMO_MAX = 65_536


class Memos:
    """The bounded memos of wire values already validated, one table per kind of value.

    Only values the careful readers accepted are remembered, each table up to ``max_entries``
    (later values are simply not remembered); the fast paths look values up here and fall back
    to the careful readers on a miss. :meth:`clear` empties every table in place (the fast
    paths keep no other reference), for tests and for a process that wants the memory back.

    Args:
        max_entries: Most entries per table.
    """

    __slots__ = ("counts", "max_entries", "prices", "signed", "tickers", "uuids")

    def __init__(self, max_entries: int = _MEMO_MAX) -> None:
        self.max_entries = max_entries
        #: Price text -> price in storage units.
        self.prices: dict[str, int] = {}
        #: Unsigned count text -> count in storage units.
        self.counts: dict[str, int] = {}
        #: Signed count text (``delta_fp``) -> count in storage units.
        self.signed: dict[str, int] = {}
        #: Market id text -> uuid (trade ids never repeat and are not remembered).
        self.uuids: dict[str, uuid.UUID] = {}
        #: Tickers that matched :data:`TICKER_RE` (a dict used as a bounded, ordered set).
        self.tickers: dict[str, None] = {}

    def clear(self) -> None:
        """Forget every remembered value."""
        for table in (self.prices, self.counts, self.signed, self.uuids, self.tickers):
            table.clear()

    def sizes(self) -> dict[str, int]:
        """Entries per table, by name."""
        return {
            "prices": len(self.prices),
            "counts": len(self.counts),
            "signed": len(self.signed),
            "uuids": len(self.uuids),
            "tickers": len(self.tickers),
        }


#: The memos every parser in this process shares.
MEMOS = Memos()
#: Accepted ``ts_ms`` window, the millisecond form of fixedpoint's microsecond bounds.
_MIN_TS_MS = MIN_TS_US // 1000
_MAX_TS_MS = MAX_TS_US // 1000
_SIDES = {"yes": "yes", "no": "no"}
#: What a fast path raises when it meets anything unusual: the careful path takes over.
_FAST_MISS = (KeyError, TypeError, ValueError)


def _uuid_parser() -> Callable[[str], uuid.UUID]:
    """asyncpg's C ``UUID`` when importable, else :class:`uuid.UUID` (same values either way).

    The C type is asyncpg's private ``pgproto`` module, so it is only an accelerator: an asyncpg
    without it (or none at all) costs speed, never correctness.
    """
    try:
        from asyncpg.pgproto.pgproto import UUID  # noqa: PLC0415  # optional accelerator
    except ImportError:
        return uuid.UUID
    return UUID  # type: ignore[no-any-return]


#: Parses a uuid's text; a :class:`uuid.UUID` (or a subclass, equal and hash-equal to it).
_CUUID = _uuid_parser()


def _uuid_of(v: str) -> uuid.UUID:
    """A uuid from its string form.

    asyncpg's C ``UUID`` (a :class:`uuid.UUID` subclass, equal and hash-equal to it) parses ten
    times faster; the forms it refuses but :class:`uuid.UUID` accepts (braces, ``urn:uuid:``)
    still go through :class:`uuid.UUID`, so the accepted set is unchanged (and is the same when
    the accelerator is missing).
    """
    try:
        fast: uuid.UUID = _CUUID(v)
    except ValueError:
        return uuid.UUID(v)
    return fast


def _memo_price(v: object) -> int:
    """parse_price with a bounded memo (only valid strings are remembered)."""
    if type(v) is str:
        memo = MEMOS.prices
        hit = memo.get(v)
        if hit is not None:
            return hit
        out = parse_price(v)
        if len(memo) < MEMOS.max_entries:
            memo[v] = out
        return out
    return parse_price(v)  # type: ignore[arg-type]  # raises the reasoned ValueError


def _memo_count(v: object, signed: bool) -> int:
    """parse_count with a bounded memo per signedness."""
    memo = MEMOS.signed if signed else MEMOS.counts
    if type(v) is str:
        hit = memo.get(v)
        if hit is not None:
            return hit
        out = parse_count(v, signed=signed)
        if len(memo) < MEMOS.max_entries:
            memo[v] = out
        return out
    return parse_count(v, signed=signed)  # type: ignore[arg-type]  # raises ValueError


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not become a record: why, and the raw bytes (for ``dead_letters``)."""

    reason: str
    raw: bytes


@dataclass(slots=True)
class Frame:
    """A decoded server frame's envelope (§3.2); ``msg`` is the undecoded payload value.

    Not frozen: one is built per frame and a frozen dataclass costs four times as much to build.
    """

    type: str
    id: int | None
    sid: int | None
    seq: int | None
    msg: Any
    raw: bytes | str


class _Reject(KalshiDataError):  # internal control flow, never escapes
    """A validation failure; its message becomes the dead letter's reason."""


def _to_bytes(raw: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return bytes(raw)


def _dead(reason: str, raw: bytes | str) -> DeadLetter:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return DeadLetter(reason[:500], raw[:MAX_DEAD_LETTER_BYTES])


def dead_letter(reason: str, raw: bytes | str) -> DeadLetter:
    """A dead letter of ``raw`` (a frame's text or bytes), reason and raw bytes bounded."""
    return _dead(reason, raw)


# -- field readers: raise _Reject with a reason naming the field -----------------------------


def _opt_int(obj: dict[str, Any], key: str, *, lo: int = 0, hi: int = _INT64_MAX) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if type(v) is int and lo <= v <= hi:  # the common case, first
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Reject(f"{key} must be an integer")
    if not lo <= v <= hi:
        raise _Reject(f"{key} out of range")
    return v


def _req_int(obj: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    v = _opt_int(obj, key, lo=lo, hi=hi)
    if v is None:
        raise _Reject(f"{key} missing")
    return v


def _opt_str(obj: dict[str, Any], key: str, max_len: int = MAX_SHORT_STR) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise _Reject(f"{key} must be a string")
    if len(v) > max_len:
        raise _Reject(f"{key} longer than {max_len}")
    return v


def _req_str(obj: dict[str, Any], key: str, max_len: int = MAX_SHORT_STR) -> str:
    v = _opt_str(obj, key, max_len)
    if v is None:
        raise _Reject(f"{key} missing")
    return v


def _ticker(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise _Reject(f"{key} missing" if v is None else f"{key} must be a string")
    memo = MEMOS.tickers
    if v not in memo:
        if TICKER_RE.fullmatch(v) is None:
            raise _Reject(f"{key} {v[:40]!r} is not a valid ticker")
        if len(memo) < MEMOS.max_entries:
            memo[v] = None
    return v


def _opt_uuid(obj: dict[str, Any], key: str) -> uuid.UUID | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > 45:
        raise _Reject(f"{key} must be a uuid string")
    memo = MEMOS.uuids
    hit = memo.get(v)
    if hit is not None:
        return hit
    try:
        out = _uuid_of(v)
    except ValueError:
        raise _Reject(f"{key} is not a uuid") from None
    if key == "market_id" and len(memo) < MEMOS.max_entries:
        memo[v] = out  # market ids repeat; trade ids never do
    return out


def _req_uuid(obj: dict[str, Any], key: str) -> uuid.UUID:
    v = _opt_uuid(obj, key)
    if v is None:
        raise _Reject(f"{key} missing")
    return v


def _price(obj: dict[str, Any], key: str) -> int:
    v = obj.get(key)
    if v is None:
        raise _Reject(f"{key} missing")
    try:
        return _memo_price(v)
    except ValueError as exc:
        raise _Reject(f"{key}: {exc}") from None


def _opt_price(obj: dict[str, Any], key: str) -> int | None:
    """A price that may be ``""`` or absent (no trade yet on a ticker, §3.6)."""
    v = obj.get(key)
    if v is None or v == "":
        return None
    return _price(obj, key)


def _count(obj: dict[str, Any], key: str, *, signed: bool = False, memo: bool = True) -> int:
    """A count field; ``memo=False`` for running totals, which would only crowd the memo out."""
    v = obj.get(key)
    if v is None:
        raise _Reject(f"{key} missing")
    try:
        return _memo_count(v, signed) if memo else parse_count(v, signed=signed)
    except ValueError as exc:
        raise _Reject(f"{key}: {exc}") from None


def _bool(obj: dict[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _Reject(f"{key} must be a boolean")
    return v


def _ts(msg: dict[str, Any]) -> int | None:
    try:
        return exchange_ts_us(msg)
    except ValueError as exc:
        raise _Reject(str(exc)) from None


def _req_ts(msg: dict[str, Any]) -> int:
    ts = _ts(msg)
    if ts is None:
        raise _Reject("no ts_ms, ts or time")
    return ts


def _levels(obj: dict[str, Any], key: str) -> tuple[tuple[int, int], ...]:
    """A book side ``[[price_str, count_str], ...]``: sorted ascending, zero levels dropped."""
    v = obj.get(key)
    if v is None:
        return ()  # a side's key is omitted when that side is empty (§3.5)
    if not isinstance(v, list):
        raise _Reject(f"{key} must be an array")
    if len(v) > MAX_LEVELS:
        raise _Reject(f"{key} has more than {MAX_LEVELS} levels")
    book: dict[int, int] = {}
    for level in v:
        if not isinstance(level, list) or len(level) != 2:
            raise _Reject(f"{key} level must be [price, count]")
        try:
            price = _memo_price(level[0])
            count = _memo_count(level[1], False)
        except ValueError as exc:
            raise _Reject(f"{key}: {exc}") from None
        if price in book:
            raise _Reject(f"{key} repeats price level {price}")
        book[price] = count
    return tuple(sorted((p, c) for p, c in book.items() if c != 0))


def _side(msg: dict[str, Any], key: str) -> str:
    v = _req_str(msg, key)
    if v not in {"yes", "no"}:
        raise _Reject(f"{key} must be yes or no")
    return v


# -- WebSocket data messages (§3.5-3.10) -----------------------------------------------------


def _snapshot(msg: dict[str, Any], sid: int | None, seq: int | None) -> SnapshotRec:
    return SnapshotRec(
        ticker=_ticker(msg, "market_ticker"),
        market_id=_opt_uuid(msg, "market_id"),
        source="ws",
        yes=_levels(msg, "yes_dollars_fp"),
        no=_levels(msg, "no_dollars_fp"),
        sid=sid,
        seq=seq,
    )


def _delta(msg: dict[str, Any], sid: int | None, seq: int | None) -> DeltaRec:
    g = msg.get
    m = MEMOS
    try:  # fast path: every value already seen and validated (see the module docstring)
        ticker = msg["market_ticker"]
        m.tickers[ticker]
        delta = m.signed[msg["delta_fp"]]
        price = m.prices[msg["price_dollars"]]
        side = _SIDES[msg["side"]]
        mid = g("market_id")
        market_id = None if mid is None else m.uuids[mid]
        ts = msg["ts_ms"]
        if type(ts) is not int or not _MIN_TS_MS <= ts < _MAX_TS_MS or not delta:
            raise KeyError(ts)
    except _FAST_MISS:
        return _delta_checked(msg, sid, seq)
    return DeltaRec(ticker, market_id, ts * 1000, side, price, delta, sid, seq)


def _delta_checked(msg: dict[str, Any], sid: int | None, seq: int | None) -> DeltaRec:
    delta = _count(msg, "delta_fp", signed=True)
    if delta == 0:
        raise _Reject("delta_fp is zero")
    return DeltaRec(
        ticker=_ticker(msg, "market_ticker"),
        market_id=_opt_uuid(msg, "market_id"),
        exchange_ts_us=_ts(msg),
        side=_side(msg, "side"),
        price=_price(msg, "price_dollars"),
        delta=delta,
        sid=sid,
        seq=seq,
    )


def _trade(msg: dict[str, Any], sid: int | None, seq: int | None, ticker_key: str) -> TradeRec:
    if "ts_ms" not in msg and "ts" not in msg and "created_time" in msg:
        # REST trades (§4): microseconds on the wire, floored to the WS trade's millisecond.
        ts = ms_floor_us(_rfc3339(msg, "created_time"))
    else:
        ts = _req_ts(msg)
    return TradeRec(
        trade_id=_req_uuid(msg, "trade_id"),
        ticker=_ticker(msg, ticker_key),
        exchange_ts_us=ts,
        yes_price=_price(msg, "yes_price_dollars"),
        no_price=_price(msg, "no_price_dollars"),
        count=_count(msg, "count_fp"),
        taker_outcome_side=_opt_str(msg, "taker_outcome_side"),
        taker_book_side=_opt_str(msg, "taker_book_side"),
        taker_side=_opt_str(msg, "taker_side"),
        is_block_trade=_bool(msg, "is_block_trade", default=False),
        sid=sid,
        seq=seq,
    )


def _opt_short(v: object) -> str | None:
    """The fast form of :func:`_opt_str`: None, or a short str; anything else is a miss."""
    if v is None or (type(v) is str and len(v) <= MAX_SHORT_STR):
        return v
    raise KeyError(v)


def _ws_trade(msg: dict[str, Any], sid: int | None, seq: int | None) -> TradeRec:
    g = msg.get
    m = MEMOS
    try:  # fast path (see the module docstring)
        tid = msg["trade_id"]
        if type(tid) is not str or len(tid) > 45:
            raise KeyError(tid)
        trade_id = _CUUID(tid)
        ticker = msg["market_ticker"]
        m.tickers[ticker]
        ts = msg["ts_ms"]
        if type(ts) is not int or not _MIN_TS_MS <= ts < _MAX_TS_MS:
            raise KeyError(ts)
        block = g("is_block_trade")
        if block is None:
            block = False
        elif type(block) is not bool:
            raise KeyError(block)
        rec = TradeRec(
            trade_id,
            ticker,
            ts * 1000,
            m.prices[msg["yes_price_dollars"]],
            m.prices[msg["no_price_dollars"]],
            m.counts[msg["count_fp"]],
            _opt_short(g("taker_outcome_side")),
            _opt_short(g("taker_book_side")),
            _opt_short(g("taker_side")),
            block,
            sid,
            seq,
        )
    except _FAST_MISS:
        return _trade(msg, sid, seq, "market_ticker")
    return rec


_DOLLARS_BOUND = 10**15


def _opt_memo_price(v: object) -> int | None:
    """The fast form of :func:`_opt_price`: None or ``""`` -> None, else a memo hit or a miss."""
    if v is None or v == "":
        return None
    return MEMOS.prices[v]  # type: ignore[index]  # a non-str misses (KeyError / TypeError)


def _dollars(v: object) -> int:
    """The fast form of the ``dollar_*`` integer fields."""
    if type(v) is int and -_DOLLARS_BOUND <= v <= _DOLLARS_BOUND:
        return v
    raise KeyError(v)


def _ticker_msg(msg: dict[str, Any], sid: int | None, seq: int | None) -> TickerRec:
    g = msg.get
    m = MEMOS
    try:  # fast path (see the module docstring)
        ticker = msg["market_ticker"]
        m.tickers[ticker]
        mid = g("market_id")
        ts = msg["ts_ms"]
        if type(ts) is not int or not _MIN_TS_MS <= ts < _MAX_TS_MS:
            raise KeyError(ts)
        counts = m.counts
        rec = TickerRec(
            ticker,
            None if mid is None else m.uuids[mid],
            ts * 1000,
            _opt_memo_price(g("price_dollars")),
            _opt_memo_price(g("yes_bid_dollars")),
            _opt_memo_price(g("yes_ask_dollars")),
            parse_count(msg["volume_fp"]),  # running totals: nearly every value is new
            parse_count(msg["open_interest_fp"]),
            _dollars(msg["dollar_volume"]),
            _dollars(msg["dollar_open_interest"]),
            counts[msg["yes_bid_size_fp"]],
            counts[msg["yes_ask_size_fp"]],
            counts[msg["last_trade_size_fp"]],
            sid,
        )
    except _FAST_MISS:
        return _ticker_checked(msg, sid, seq)
    return rec


def _ticker_checked(msg: dict[str, Any], sid: int | None, seq: int | None) -> TickerRec:
    del seq  # ticker frames carry no seq (§3.4)
    return TickerRec(
        ticker=_ticker(msg, "market_ticker"),
        market_id=_opt_uuid(msg, "market_id"),
        exchange_ts_us=_req_ts(msg),
        price=_opt_price(msg, "price_dollars"),
        yes_bid=_opt_price(msg, "yes_bid_dollars"),
        yes_ask=_opt_price(msg, "yes_ask_dollars"),
        volume=_count(msg, "volume_fp", memo=False),
        open_interest=_count(msg, "open_interest_fp", memo=False),
        dollar_volume=_req_int(msg, "dollar_volume", lo=-_DOLLARS_BOUND, hi=_DOLLARS_BOUND),
        dollar_open_interest=_req_int(
            msg, "dollar_open_interest", lo=-_DOLLARS_BOUND, hi=_DOLLARS_BOUND
        ),
        yes_bid_size=_count(msg, "yes_bid_size_fp"),
        yes_ask_size=_count(msg, "yes_ask_size_fp"),
        last_trade_size=_count(msg, "last_trade_size_fp"),
        sid=sid,
    )


def _lifecycle(
    kind: LifecycleKind, ticker_key: str, event_type: str | None
) -> Callable[[dict[str, Any], int | None, int | None], LifecycleRec]:
    def parse(msg: dict[str, Any], sid: int | None, seq: int | None) -> LifecycleRec:
        return LifecycleRec(
            kind=kind,
            ticker=_ticker(msg, ticker_key),
            event_type=event_type or _req_str(msg, "event_type"),
            payload=canonical_json(msg),
            sid=sid,
            seq=seq,
        )

    return parse


_DataParser = Callable[[dict[str, Any], int | None, int | None], Record]

#: Data frame types this collector records, with their parsers.
DATA_PARSERS: dict[str, _DataParser] = {
    "orderbook_snapshot": _snapshot,
    "orderbook_delta": _delta,
    "trade": _ws_trade,
    "ticker": _ticker_msg,
    "market_lifecycle_v2": _lifecycle("market", "market_ticker", None),
    # Combo markets' lifecycle: the same msg on its own channel (AsyncAPI allOf).
    "multivariate_market_lifecycle": _lifecycle("market", "market_ticker", None),
    "event_lifecycle": _lifecycle("event", "event_ticker", "event_lifecycle"),
    "event_fee_update": _lifecycle("fee", "event_ticker", "event_fee_update"),
}
#: Server replies to commands (§3.2); every other type is data.
CONTROL_TYPES = frozenset({"subscribed", "unsubscribed", "ok", "error"})


def _envelope_int(v: object) -> bool:
    """The fast form of :func:`_opt_int` for ``id``/``sid``/``seq``: absent or a plain int."""
    return v is None or (type(v) is int and 0 <= v <= _INT64_MAX)


def decode_frame(raw: bytes | bytearray | memoryview | str) -> Frame | DeadLetter:
    """Decode a server frame's JSON and check its envelope; never raises.

    ``Frame.raw`` is the frame as received (``bytes`` or ``str``); dead letters carry bytes.
    """
    if (type(raw) is bytes or type(raw) is str) and len(raw) <= _FAST_FRAME_LIMIT:
        try:  # fast path: a well-formed envelope (the careful path below says why not)
            obj = orjson.loads(raw)
            if type(obj) is dict:
                g = obj.get
                ftype, fid, sid, seq = g("type"), g("id"), g("sid"), g("seq")
                if (
                    type(ftype) is str
                    and 0 < len(ftype) <= MAX_SHORT_STR
                    and _envelope_int(fid)
                    and _envelope_int(sid)
                    and _envelope_int(seq)
                ):
                    return Frame(ftype, fid, sid, seq, g("msg"), raw)
        except Exception:  # noqa: S110 (the careful path below decodes again and says why)
            pass
    return _decode_frame_checked(raw)


def _decode_frame_checked(raw: bytes | bytearray | memoryview | str) -> Frame | DeadLetter:
    try:
        data = _to_bytes(raw)
    except Exception as exc:  # never raise: bad input is a dead letter
        return _dead(f"undecodable frame: {type(exc).__name__}", b"")
    try:
        obj = _frame_object(data)
        if isinstance(obj, str):
            return _dead(obj, data)
        ftype: str = obj["type"]
        try:
            return Frame(
                type=ftype,
                id=_opt_int(obj, "id"),
                sid=_opt_int(obj, "sid"),
                seq=_opt_int(obj, "seq"),
                msg=obj.get("msg"),
                raw=data,
            )
        except _Reject as exc:
            return _dead(f"{ftype}: {exc}", data)
    except Exception as exc:  # never crash the loop on input (DESIGN §4.5)
        return _dead(f"internal parser error: {type(exc).__name__}", data)


def _frame_object(data: bytes) -> dict[str, Any] | str:
    """The frame's JSON object with a valid ``type``, or why it is not one."""
    if len(data) > MAX_FRAME_BYTES:
        return f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}"
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(obj, dict):
        return "frame is not a JSON object"
    wire_type = obj.get("type")
    if not isinstance(wire_type, str) or not wire_type or len(wire_type) > MAX_SHORT_STR:
        return "frame has no valid type"
    return obj


def parse_data(frame: Frame) -> Record | DeadLetter:
    """The record carried by a data frame, or a dead letter; never raises."""
    parser = DATA_PARSERS.get(frame.type)
    if parser is None:
        return _dead(f"unsupported message type {frame.type[:40]!r}", frame.raw)
    if not isinstance(frame.msg, dict):
        return _dead(f"{frame.type}: msg is not an object", frame.raw)
    try:
        return parser(frame.msg, frame.sid, frame.seq)
    except _Reject as exc:
        return _dead(f"{frame.type}: {exc}", frame.raw)
    except Exception as exc:  # never crash the loop on input (DESIGN §4.5)
        return _dead(f"{frame.type}: internal parser error: {type(exc).__name__}", frame.raw)


def parse_frame(raw: bytes | bytearray | memoryview | str) -> Record | Frame | DeadLetter:
    """One step: a record for a data frame, the :class:`Frame` for a control frame, or a dead
    letter; never raises."""
    frame = decode_frame(raw)
    if isinstance(frame, DeadLetter) or frame.type in CONTROL_TYPES:
        return frame
    return parse_data(frame)


# -- REST objects (§4) -----------------------------------------------------------------------


def _rfc3339(obj: dict[str, Any], key: str) -> int:
    try:
        return rfc3339_to_us(obj.get(key))
    except ValueError as exc:
        raise _Reject(f"{key}: {exc}") from None


def _updated(obj: dict[str, Any], key: str) -> int | None:
    """An optional update time (RFC 3339 or Unix seconds); unparseable means unknown."""
    v = obj.get(key)
    try:
        if isinstance(v, str):
            return rfc3339_to_us(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return s_to_us(v)
    except ValueError:
        return None
    return None


def _rest(build: Callable[[dict[str, Any]], Any], what: str, obj: Any) -> Any:
    try:
        if not isinstance(obj, dict):
            raise _Reject("not an object")  # noqa: TRY301 (one reporting path for all rejects)
        return build(obj)
    except Exception as exc:  # bad input becomes a dead letter
        try:
            raw = orjson.dumps(obj)
        except Exception:  # unserialisable: keep its repr
            raw = repr(obj)[:MAX_DEAD_LETTER_BYTES].encode("utf-8", "replace")
        detail = str(exc) if isinstance(exc, _Reject) else f"internal: {type(exc).__name__}"
        return _dead(f"rest {what}: {detail}", raw)


def _market(obj: dict[str, Any]) -> MarketRec:
    return MarketRec(
        ticker=_ticker(obj, "ticker"),
        event_ticker=_ticker(obj, "event_ticker"),
        status=_req_str(obj, "status"),
        updated_time_us=_updated(obj, "updated_time"),
        data=canonical_json(obj),
    )


def market_from_rest(obj: Any) -> MarketRec | DeadLetter:
    """A ``/markets`` item."""
    out: MarketRec | DeadLetter = _rest(_market, "market", obj)
    return out


def _event(obj: dict[str, Any]) -> EventRec:
    data = {k: v for k, v in obj.items() if k != "markets"}
    return EventRec(
        event_ticker=_ticker(obj, "event_ticker"),
        series_ticker=_ticker(obj, "series_ticker"),
        updated_time_us=_updated(obj, "last_updated_ts"),
        data=canonical_json(data),
    )


def event_from_rest(obj: Any) -> EventRec | DeadLetter:
    """An ``/events`` item (nested ``markets`` are left out of ``data``)."""
    out: EventRec | DeadLetter = _rest(_event, "event", obj)
    return out


def _series(obj: dict[str, Any]) -> SeriesRec:
    return SeriesRec(
        ticker=_ticker(obj, "ticker"),
        updated_time_us=_updated(obj, "last_updated_ts"),
        data=canonical_json(obj),
    )


def series_from_rest(obj: Any) -> SeriesRec | DeadLetter:
    """A ``/series`` item."""
    out: SeriesRec | DeadLetter = _rest(_series, "series", obj)
    return out


def trade_from_rest(obj: Any) -> TradeRec | DeadLetter:
    """A ``/markets/trades`` item (time from ``ts_ms`` when present, else ``created_time``
    floored to the millisecond, so the REST and WS copies of a trade share one identity)."""
    out: TradeRec | DeadLetter = _rest(lambda o: _trade(o, None, None, "ticker"), "trade", obj)
    return out


def orderbook_from_rest(ticker: str, orderbook_fp: Any) -> SnapshotRec | DeadLetter:
    """A REST ``orderbook_fp`` object (``yes_dollars``/``no_dollars``) as a ``rest`` snapshot."""

    def build(obj: dict[str, Any]) -> SnapshotRec:
        if TICKER_RE.fullmatch(ticker) is None:
            raise _Reject(f"ticker {ticker[:40]!r} is not a valid ticker")
        return SnapshotRec(
            ticker=ticker,
            market_id=None,
            source="rest",
            yes=_levels(obj, "yes_dollars"),
            no=_levels(obj, "no_dollars"),
        )

    out: SnapshotRec | DeadLetter = _rest(build, "orderbook", orderbook_fp)
    return out
