"""Server→client frame bytes (kalshi-protocol.md §3.2): envelopes, replies, errors, bad frames.

A data frame's ``msg`` is serialised once per event; :func:`data_frame` wraps those bytes in a
per-subscriber envelope (``sid``/``seq`` differ per subscriber, the ``msg`` bytes do not).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import orjson

from kalshi_data.kalshi.codes import MESSAGES, WsErrorCode

#: Frame types that carry a per-sid ``seq`` (§3.4). ``ticker`` has none.
SEQUENCED = frozenset(
    {
        "orderbook_snapshot",
        "orderbook_delta",
        "trade",
        "market_lifecycle_v2",
        "event_lifecycle",
        "multivariate_market_lifecycle",
    }
)

#: The error codes this exchange sends (§3.2); it implements no shard, match, index or
#: underlying-ticker parameters, so their codes (19-24, 28) never arise.
SENT_CODES: tuple[WsErrorCode, ...] = tuple(
    c for c in WsErrorCode if not 19 <= c <= 24 and c != WsErrorCode.UNDERLYING_TICKERS_REQUIRED
)
#: Error code -> message text (§3.2), from the table the client shares.
ERRORS: dict[int, str] = {int(c): MESSAGES[c] for c in SENT_CODES}

MALFORMED_KINDS = (
    "invalid_json",
    "missing_field",
    "bad_price",
    "unknown_type",
    "six_decimals",
    "subunit_price",
)

_PREFIX: dict[str, bytes] = {}


def prefix(frame_type: str) -> bytes:
    """``{"type":"<t>","sid":`` — the fixed start of every data frame of that type."""
    p = _PREFIX.get(frame_type)
    if p is None:
        p = _PREFIX[frame_type] = b'{"type":"%b","sid":' % frame_type.encode()
    return p


def data_frame(frame_type: str, sid: int, seq: int | None, msg: bytes, cmd_id: int = 0) -> bytes:
    """One data frame; ``seq`` None for unsequenced types; ``cmd_id`` echoes get_snapshot."""
    head = (
        b'{"id":%d,"type":"%b","sid":' % (cmd_id, frame_type.encode())
        if cmd_id
        else prefix(frame_type)
    )
    if seq is None:
        return b'%b%d,"msg":%b}' % (head, sid, msg)
    return b'%b%d,"seq":%d,"msg":%b}' % (head, sid, seq, msg)


def reply(frame_type: str, cmd_id: int, **fields: Any) -> bytes:
    """A command reply (``subscribed``, ``ok``, ``unsubscribed``) with ``id`` when non-zero."""
    obj: dict[str, Any] = {"id": cmd_id} if cmd_id else {}
    obj["type"] = frame_type
    obj.update({k: v for k, v in fields.items() if v is not None})
    return orjson.dumps(obj)


def error(
    code: int, cmd_id: int = 0, sid: int | None = None, seq: int | None = None, **extra: Any
) -> bytes:
    """``{"id":..,"type":"error","msg":{"code":c,"msg":text}}`` (§3.2); subscription-scoped
    errors carry ``sid`` and may carry ``seq`` (AsyncAPI ``errorResponsePayload``)."""
    obj: dict[str, Any] = {"id": cmd_id} if cmd_id else {}
    if sid is not None:
        obj["sid"] = sid
    if seq is not None:
        obj["seq"] = seq
    obj["type"] = "error"
    obj["msg"] = {"code": code, "msg": ERRORS.get(code, "Error"), **extra}
    return orjson.dumps(obj)


def malformed(kind: str, frame_type: str, sid: int, seq: int | None, msg: dict[str, Any]) -> bytes:
    """A deliberately broken data frame of ``kind`` (one of :data:`MALFORMED_KINDS`).

    ``invalid_json`` cuts the frame in half; ``missing_field`` drops a required msg field
    (``price_dollars`` on deltas, else the first field); ``bad_price`` puts ``"1.2500"`` (above
    one dollar) in every price field; ``unknown_type`` renames the frame type.
    ``six_decimals`` writes every price with 6 decimals (``"0.480000"``: the same price, valid by
    the ``FixedPointDollars`` schema); ``subunit_price`` adds 0.000050 $ to every price (finer
    than the 1/10,000 $ unit: a client must not round it silently).
    """
    body = dict(msg)
    if kind == "invalid_json":
        whole = data_frame(frame_type, sid, seq, orjson.dumps(body))
        return whole[: len(whole) // 2]
    if kind == "missing_field":
        victim = "price_dollars" if "price_dollars" in body else next(iter(body), None)
        if victim is not None:
            body.pop(victim)
    elif kind == "bad_price":
        for key in list(body):
            if key.endswith("_dollars") and isinstance(body[key], str):
                body[key] = "1.2500"
        body.setdefault("price_dollars", "1.2500")
    elif kind in ("six_decimals", "subunit_price"):
        tail = "00" if kind == "six_decimals" else "50"
        for key in list(body):
            if key.endswith("_dollars") and isinstance(body[key], str) and len(body[key]) == 6:
                body[key] = body[key] + tail
    elif kind == "unknown_type":
        frame_type = "mystery_frame"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return data_frame(frame_type, sid, seq, orjson.dumps(body))


_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_text_frames(payloads: Iterable[bytes]) -> bytes:
    """Unmasked, uncompressed WebSocket text frames (RFC 6455 §5.2), one per payload, joined.

    What a server writes: FIN + opcode 1, then the length in 7, 7+16 or 7+64 bits, then the
    payload. The WebSocket shell writes many frames in one ``transport.write`` with this.
    """
    parts: list[bytes] = []
    append = parts.append
    for payload in payloads:
        n = len(payload)
        if n < 126:
            append(bytes((0x81, n)))
        elif n < 65536:
            append(_LEN16.pack(0x81, 126, n))
        else:
            append(_LEN64.pack(0x81, 127, n))
        append(payload)
    return b"".join(parts)
