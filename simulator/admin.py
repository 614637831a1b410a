"""The admin HTTP API (JSON) for fault injection and inspection; see docs/simulator.md.

Every endpoint lives under ``/admin`` on the admin port. Requests name a connection by the
``id`` that ``GET /admin/connections`` lists and a subscription by its ``sid``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from kalshi_data.kalshi import codes
from simulator import frames, shapes
from simulator.errors import SimulatorError
from simulator.session import Session, Sub

if TYPE_CHECKING:
    from simulator.server import Simulator

Handler = Callable[[web.Request], Awaitable[web.Response]]


class AdminError(SimulatorError):
    """A refused admin request: HTTP ``status`` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ok(obj: Any = None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"ok": True} if obj is None else obj), content_type="application/json"
    )


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise AdminError(400, "body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdminError(400, f"{name} must be an integer")
    return value


class AdminApi:
    """Maps admin requests onto the running simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def routes(self) -> list[web.RouteDef]:
        """All admin routes."""
        post: dict[str, Handler] = {
            "drop": self.drop,
            "skip_seq": self.skip_seq,
            "duplicate": self.duplicate,
            "malformed": self.malformed,
            "sub_error": self.sub_error,
            "command_error": self.command_error,
            "pings": self.pings,
            "slow": self.slow,
            "rest_faults": self.rest_faults,
            "pause": self.pause,
            "resume": self.resume,
            "rate": self.rate,
            "truth_flush": self.truth_flush,
            "withhold_trades": self.withhold_trades,
            "historical_cutoff": self.historical_cutoff,
        }
        routes = [
            web.get("/admin/connections", self.connections),
            web.get("/admin/stats", self.stats),
        ]
        routes += [web.post(f"/admin/{name}", handler) for name, handler in post.items()]
        return routes

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Turn :class:`AdminError` into a JSON error response."""
        try:
            return await handler(request)
        except AdminError as exc:
            return web.Response(
                body=orjson.dumps({"ok": False, "error": str(exc)}),
                status=exc.status,
                content_type="application/json",
            )

    def _session(self, body: dict[str, Any]) -> Session:
        conn = self.sim.ws.connections.get(_int(body, "conn"))
        if conn is None:
            raise AdminError(404, "unknown connection")
        return conn.session

    def _sub(self, body: dict[str, Any]) -> Sub:
        session = self._session(body)
        sub = session.subs.get(_int(body, "sid"))
        if sub is None:
            raise AdminError(404, "unknown sid")
        return sub

    async def connections(self, _request: web.Request) -> web.Response:
        """``GET /admin/connections``."""
        return _ok(
            {"connections": [c.session.describe() for c in self.sim.ws.connections.values()]}
        )

    async def stats(self, _request: web.Request) -> web.Response:
        """``GET /admin/stats``."""
        return _ok(self.sim.stats())

    async def drop(self, request: web.Request) -> web.Response:
        """Drop one connection (``conn``) or all; ``mode`` abort (default) or close."""
        body = await _body(request)
        mode = body.get("mode", "abort")
        if mode not in ("abort", "close"):
            raise AdminError(400, "mode must be abort or close")
        conns = list(self.sim.ws.connections.values())
        if "conn" in body:
            conns = [c for c in conns if c.conn_id == _int(body, "conn")]
            if not conns:
                raise AdminError(404, "unknown connection")
        for c in conns:
            if mode == "abort":
                c.abort()
            else:
                await c.close(1001)
        return _ok({"ok": True, "dropped": [c.conn_id for c in conns]})

    async def skip_seq(self, request: web.Request) -> web.Response:
        """The next ``n`` frames of ``sid`` are not sent (the client sees seq jump by ``n``)."""
        body = await _body(request)
        sub = self._sub(body)
        n = _int(body, "n", 1)
        if n < 1:
            raise AdminError(400, "n must be >= 1")
        sub.skip += n
        sub.refresh_faulty()
        return _ok()

    async def duplicate(self, request: web.Request) -> web.Response:
        """The next ``n`` frames of ``sid`` are each sent twice (same seq)."""
        body = await _body(request)
        sub = self._sub(body)
        sub.dup += max(1, _int(body, "n", 1))
        sub.refresh_faulty()
        return _ok()

    async def malformed(self, request: web.Request) -> web.Response:
        """A broken frame: with ``sid``, the next data frame there; without, an extra one now."""
        body = await _body(request)
        kind = body.get("kind", "invalid_json")
        if kind not in frames.MALFORMED_KINDS:
            raise AdminError(400, f"kind must be one of {', '.join(frames.MALFORMED_KINDS)}")
        if "sid" in body:
            sub = self._sub(body)
            sub.corrupt = kind
            sub.refresh_faulty()
            return _ok()
        session = self._session(body)
        ex = self.sim.exchange
        m = ex.market_list[0]
        msg = shapes.delta_msg(m, "yes", m.tick, 100, self.sim.hub.now_ms())
        sid = next(iter(session.subs), 0)
        session.push(frames.malformed(kind, "orderbook_delta", sid, None, msg))
        return _ok()

    async def sub_error(self, request: web.Request) -> web.Response:
        """Send terminal error ``code`` (25 or 10) on ``sid`` and end that subscription."""
        body = await _body(request)
        code = _int(body, "code", 25)
        if code not in codes.TERMINAL:
            raise AdminError(400, "code must be 10 or 25")
        sub = self._sub(body)
        sub.session.end_sub(sub.sid, code)
        return _ok()

    async def command_error(self, request: web.Request) -> web.Response:
        """Refuse the next ``n`` commands of ``conn`` with ``code`` 18 (command timeout) or 27
        (per-subscription command rate limit); nothing changes on the exchange side."""
        body = await _body(request)
        code = _int(body, "code", 27)
        if code not in codes.RETRYABLE:
            raise AdminError(400, "code must be 18 or 27")
        n = _int(body, "n", 1)
        if n < 1:
            raise AdminError(400, "n must be >= 1")
        session = self._session(body)
        session.refuse.extend([code] * n)
        return _ok()

    async def pings(self, request: web.Request) -> web.Response:
        """``enabled`` false: stop sending Pings and stop answering the client's Pings."""
        body = await _body(request)
        session = self._session(body)
        enabled = body.get("enabled", False)
        if not isinstance(enabled, bool):
            raise AdminError(400, "enabled must be a boolean")
        session.pings_enabled = enabled
        return _ok()

    async def slow(self, request: web.Request) -> web.Response:
        """Wait ``delay_ms`` after each frame sent on ``conn`` (0 = full speed)."""
        body = await _body(request)
        session = self._session(body)
        delay = body.get("delay_ms", 0)
        if not isinstance(delay, int | float) or delay < 0:
            raise AdminError(400, "delay_ms must be a non-negative number")
        session.send_delay_s = float(delay) / 1000
        return _ok()

    async def rest_faults(self, request: web.Request) -> web.Response:
        """The next ``count`` REST requests answer ``status`` (429 or 500/502/503/504)."""
        body = await _body(request)
        status = _int(body, "status", 429)
        count = _int(body, "count", 1)
        faults = self.sim.rest.faults
        if status == 429:
            faults.pending_429 += count
        elif status in (500, 502, 503, 504):
            faults.pending_5xx += count
            faults.status_5xx = status
        else:
            raise AdminError(400, "status must be 429, 500, 502, 503 or 504")
        return _ok()

    async def pause(self, _request: web.Request) -> web.Response:
        """Stop market activity (no events until resume)."""
        self.sim.pause()
        return _ok()

    async def resume(self, _request: web.Request) -> web.Response:
        """Restart market activity."""
        self.sim.resume()
        return _ok()

    async def rate(self, request: web.Request) -> web.Response:
        """Change the total data rate (messages/s)."""
        body = await _body(request)
        rate = body.get("rate")
        if not isinstance(rate, int | float) or rate < 0:
            raise AdminError(400, "rate must be a non-negative number")
        self.sim.rate = float(rate)
        return _ok()

    async def truth_flush(self, _request: web.Request) -> web.Response:
        """Write buffered truth lines now; answers the number of lines written so far."""
        self.sim.truth_flush()
        return _ok({"ok": True, "truth_lines": self.sim.truth_lines})

    async def withhold_trades(self, request: web.Request) -> web.Response:
        """The next ``n`` trades go to the truth and REST history but to no connection."""
        body = await _body(request)
        n = _int(body, "n", 1)
        if n < 1:
            raise AdminError(400, "n must be >= 1")
        self.sim.hub.withhold_trades(n)
        return _ok({"ok": True, "withholding": self.sim.hub.withhold})

    async def historical_cutoff(self, request: web.Request) -> web.Response:
        """Move the historical cutoff: ``ts`` RFC 3339 or Unix seconds (null = no partition).
        Trades created before it leave ``/markets/trades`` for ``/historical/trades``."""
        body = await _body(request)
        if "ts" not in body:
            raise AdminError(400, "ts is required")
        self.sim.rest.historical_cutoff_us = cutoff_us(body["ts"])
        return _ok({"ok": True, "historical_cutoff_us": self.sim.rest.historical_cutoff_us})


def cutoff_us(value: Any) -> int | None:
    """Unix microseconds from an RFC 3339 text or Unix seconds (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AdminError(400, "ts must be RFC 3339 text or Unix seconds")
    if isinstance(value, int | float):
        return round(value * 1_000_000)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise AdminError(400, "ts must be RFC 3339 text or Unix seconds") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    raise AdminError(400, "ts must be RFC 3339 text or Unix seconds")
