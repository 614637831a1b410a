"""``Simulator``: wires the exchange model, hub, REST, WebSocket and admin servers together.

Shutdown order (STYLE habit 4): stop the activity driver, close WebSockets (1001), stop the
HTTP sites, flush and close the truth file.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from simulator.admin import AdminApi
from simulator.auth import PublicKey, generate_key, load_public_key
from simulator.config import SimConfig
from simulator.hub import Hub, Serialised, wall_ms
from simulator.market import Emitted, Exchange
from simulator.rest import RestApi, RestContext
from simulator.truth import TruthLog
from simulator.ws import WsServer

log = logging.getLogger("simulator")

#: Driver period: at 20,000 msg/s one tick carries about 100 messages.
TICK_S = 0.005
#: Truth flush period (the brief asks for at most 100 ms).
FLUSH_S = 0.05
#: Catch-up bound: after a stall the driver emits at most this many seconds of backlog at once.
MAX_CATCHUP_S = 0.25


class Simulator:
    """A running local exchange. ``await start()``, use the URLs, ``await stop()``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.rate = self.config.rate
        self._born_s = int(time.time())
        self.exchange = self._new_exchange()
        #: Replay mode: the pre-generated events and the index of the next one to emit.
        self._replay: list[Serialised] = []
        self._replay_next = 0
        self.truth: TruthLog | None = None
        self.hub = Hub(self.config, self.exchange)
        self.rest = RestContext(
            self.exchange, self.config, historical_cutoff_us=self.config.historical_cutoff_us
        )
        self.ws: WsServer = WsServer(self.hub, {})
        self._paused = False
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._key_id = ""
        self._private_key_path: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._urls: dict[str, str] = {}
        self._started_at = 0.0
        self._stopped = asyncio.Event()
        self.lag_ticks = 0

    def _new_exchange(self) -> Exchange:
        cfg = self.config
        return Exchange(
            cfg.seed,
            cfg.markets,
            self._born_s,
            # Replay mode keeps a fixed set of markets: REST listings and the stream then agree.
            lifecycle_share=0.0 if cfg.replay else cfg.lifecycle_share,
            duplicate_delta_share=cfg.duplicate_delta_share,
            trades_kept=cfg.trades_kept,
            mve_markets=cfg.mve_markets,
        )

    def _pregenerate(self, n: int) -> None:
        """Replay mode: ``n`` events from a twin of the exchange, serialised once.

        The twin has the same catalogue and seed, so the stream starts from the live exchange's
        state; the live exchange itself never moves, so REST and the snapshots sent on subscribe
        show the books as they are before the replay starts.
        """
        twin = self._new_exchange()
        out: list[Emitted] = []
        start_ms = self._born_s * 1000
        i = 0
        while len(out) < n:
            twin.step(start_ms + i // 50, out)  # about 50 events per millisecond of stream
            i += 1
        dumps = orjson.dumps
        self._replay = [(t, ticker, dumps(msg)) for t, ticker, msg in out[:n]]
        log.info("replay: %d events pre-generated", n)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listeners, start the activity driver; URLs are valid afterwards."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        if cfg.replay:
            self._pregenerate(cfg.replay)
        keys: dict[str, PublicKey] = {}
        if cfg.key_id is not None and cfg.public_key_pem is not None:
            keys[cfg.key_id] = load_public_key(cfg.public_key_pem)
            self._key_id = cfg.key_id
        else:
            workdir = cfg.workdir
            if workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="kalshi-sim-")
                workdir = Path(self._tmp.name)
            workdir.mkdir(parents=True, exist_ok=True)
            generated = generate_key(workdir)
            keys[generated.key_id] = load_public_key(generated.public_pem)
            self._key_id = generated.key_id
            self._private_key_path = generated.private_key_path
        if cfg.truth_path is not None:
            self.truth = TruthLog(cfg.truth_path)
            self.hub.truth = self.truth
        self.ws = WsServer(self.hub, keys)
        self.rest.keys = keys
        api = RestApi(self.rest)
        app = web.Application(middlewares=[api.middleware])
        app.add_routes([self.ws.route(), *api.routes()])
        port = await self._serve(app, cfg.port)
        admin = AdminApi(self)
        admin_app = web.Application(middlewares=[admin.middleware])
        admin_app.add_routes(admin.routes())
        admin_port = await self._serve(admin_app, cfg.admin_port)
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self._urls = {
            "rest": f"http://{host}:{port}/trade-api/v2",
            "ws": f"ws://{host}:{port}/trade-api/ws/v2",
            "admin": f"http://{host}:{admin_port}/admin",
        }
        self._started_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._drive(), name="sim-driver"),
            asyncio.create_task(self._flush_loop(), name="sim-truth-flush"),
        ]
        if cfg.duration_s is not None:
            self._tasks.append(asyncio.create_task(self._deadline(cfg.duration_s), name="sim-end"))

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.host, port)
        await site.start()
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop producing, close connections and listeners, flush the truth (idempotent)."""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        self._tasks = []
        await self.ws.close_all()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []
        if self.truth is not None:
            self.truth.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished (for ``--duration``)."""
        await self._stopped.wait()

    async def _deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.stop()

    async def _flush_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_S)
                self.truth_flush()
        finally:
            self.truth_flush()

    async def _drive(self) -> None:
        """Emit ``rate`` messages per second in ticks of :data:`TICK_S`."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        allowance = 0.0
        batch: list[Emitted] = []
        step = self.exchange.step
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            if self._paused or self.rate <= 0:
                last, allowance = now, 0.0
                continue
            allowance += (now - last) * self.rate
            last = now
            cap = self.rate * MAX_CATCHUP_S + 1
            if allowance > cap:
                self.lag_ticks += 1
                allowance = cap
            if allowance < 1:
                continue
            if self._replay:
                allowance -= self._emit_replay(int(allowance))
                continue
            ts_ms = wall_ms()
            while len(batch) < allowance:
                step(ts_ms, batch)
            allowance -= len(batch)
            self.hub.publish(batch)
            batch.clear()

    def _emit_replay(self, n: int) -> int:
        """Emit the next ``n`` pre-generated events (fewer at the end); returns how many."""
        start = self._replay_next
        end = min(start + n, len(self._replay))
        if start == end:
            return n  # exhausted: nothing more to send, and no backlog to build up
        self.hub.publish_serialised(self._replay[start:end])
        self._replay_next = end
        if end == len(self._replay):
            log.warning("replay: all %d pre-generated events emitted", end)
        return end - start

    # --- controls ----------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop market activity; ``publish`` is never called while paused."""
        self._paused = True
        self.rest.paused = True

    def resume(self) -> None:
        """Restart market activity."""
        self._paused = False
        self.rest.paused = False

    def truth_flush(self) -> None:
        """Write buffered truth lines to the file now."""
        if self.truth is not None:
            self.truth.flush()

    @property
    def truth_lines(self) -> int:
        """Events logged to the truth so far (0 without a truth file)."""
        return self.truth.lines if self.truth is not None else 0

    def stats(self) -> dict[str, Any]:
        """Counters for ``GET /admin/stats``."""
        ex = self.exchange
        statuses: dict[str, int] = {}
        for m in ex.market_list:
            statuses[m.status] = statuses.get(m.status, 0) + 1
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "paused": self._paused,
            "rate": self.rate,
            "events": dict(self.hub.events),
            "events_total": sum(self.hub.events.values()),
            "truth_lines": self.truth_lines,
            "connections": len(self.ws.connections),
            "ws_accepted": self.ws.accepted,
            "ws_refused": self.ws.refused,
            "rest_requests": self.rest.requests,
            "rest_rate_limited": self.rest.limited,
            "rest_faults_served": self.rest.faults.served,
            "historical_cutoff_us": self.rest.historical_cutoff_us,
            "driver_lag_ticks": self.lag_ticks,
            "markets": len(ex.market_list),
            "markets_by_status": statuses,
            "events_catalogue": len(ex.event_list),
            "series": len(ex.series),
            "trades_kept": len(ex.trades),
            "replay_total": len(self._replay),
            "replay_remaining": len(self._replay) - self._replay_next,
            "trades_withheld": self.hub.trades_withheld,
        }

    # --- public properties -------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        """``http://host:port/trade-api/v2``."""
        return self._urls["rest"]

    @property
    def ws_url(self) -> str:
        """``ws://host:port/trade-api/ws/v2``."""
        return self._urls["ws"]

    @property
    def admin_url(self) -> str:
        """``http://host:admin_port/admin``."""
        return self._urls["admin"]

    @property
    def key_id(self) -> str:
        """The accepted API key id."""
        return self._key_id

    @property
    def private_key_path(self) -> Path | None:
        """The generated private key file (None when a public key was given)."""
        return self._private_key_path

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
