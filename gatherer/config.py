"""Gatherer configuration: frozen dataclasses loaded by the shared config loader.

YAML (see ``examples/gatherer.yaml``) plus environment overrides ``KALSHI_DATA_<KEY>__<SUB>``
(e.g. ``KALSHI_DATA_DATABASE__DSN``); ``file:``/``secretsmanager:`` values for secrets. Every
check happens once, at start, and a failure names the key (:class:`ConfigError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kalshi_data.config import Secret, load_config, validate_listen
from kalshi_data.errors import ConfigError

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class KalshiConfig:
    """Where the exchange is and how to authenticate; REST budget and WS keep-alive."""

    rest_url: str
    ws_url: str
    key_id: str
    private_key_file: Path
    #: REST read budget in requests/s and its burst (Kalshi Basic tier: 20/s at cost 10).
    rest_rate_per_s: float = 10.0
    rest_burst: float = 20.0
    rest_timeout_s: float = 10.0
    #: Liveness from WebSocket pings (DESIGN §5), never from data silence.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    open_timeout_s: float = 10.0
    max_frame_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if not self.rest_url.startswith(("http://", "https://")):
            raise ConfigError("kalshi.rest_url", "must be an http(s) URL")
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise ConfigError("kalshi.ws_url", "must be a ws(s) URL")
        if not self.key_id:
            raise ConfigError("kalshi.key_id", "must not be empty")
        for name in (
            "rest_rate_per_s",
            "rest_burst",
            "rest_timeout_s",
            "ping_interval_s",
            "ping_timeout_s",
            "open_timeout_s",
        ):
            _positive(f"kalshi.{name}", getattr(self, name))
        if self.max_frame_bytes < 4096:
            raise ConfigError("kalshi.max_frame_bytes", "must be at least 4096")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """The gatherer's own local PostgreSQL/TimescaleDB and the writer's batching."""

    dsn: Secret
    connect_timeout_s: float = 5.0
    batch_rows: int = 5000
    flush_interval_s: float = 0.05
    queue_rows: int = 100_000
    #: How often ``kd_ensure_partitions()`` runs (daily partitions, plain-PostgreSQL path).
    partitions_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "flush_interval_s", "partitions_interval_s"):
            _positive(f"database.{name}", getattr(self, name))
        for name in ("batch_rows", "queue_rows"):
            _positive(f"database.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Health and metrics endpoint (``host:port``; port 0 picks a free one)."""

    listen: str = "127.0.0.1:9101"

    def __post_init__(self) -> None:
        try:
            validate_listen(self.listen)
        except ValueError as exc:
            raise ConfigError("http.listen", str(exc)) from exc


@dataclass(frozen=True, slots=True)
class GathererConfig:
    """The whole gatherer configuration."""

    gatherer_id: str
    kalshi: KalshiConfig
    database: DatabaseConfig
    spool_dir: Path
    http: HttpConfig = field(default_factory=HttpConfig)
    #: The disk spool's bound in bytes (issue 14); 0 = no bound but the disk's own size. At the
    #: bound the gatherer stops reading the exchange (closes its WebSockets, a recorded gap)
    #: until the spool is back below 90 % of it; rows already accepted are never dropped, so
    #: the spool may overshoot by what was in flight. Default 4 GiB: at 2,000 msg/s a spooled
    #: row takes ~150 bytes, so ~4 hours of a local-database outage.
    spool_max_bytes: int = 4 << 30
    #: WebSocket connections; markets are sharded across them (firehose channels ride on #0).
    connections: int = 2
    #: Markets per ``orderbook_delta`` subscription (Kalshi's cap is unpublished: error 26).
    markets_per_subscription: int = 250
    #: REST order-book snapshots every this many seconds (0 = off); slot = floor(now/interval).
    snapshot_interval_s: float = 300.0
    #: Tickers per ``GET /markets/orderbooks`` request of the snapshot poller.
    snapshot_batch: int = 100
    #: Full REST reconcile of markets/events/series.
    reconcile_interval_s: float = 300.0
    #: Markets carried, by REST status filter (Kalshi's filter vocabulary). ``unopened`` too, so
    #: a market is subscribed before its activation and its first deltas are not missed;
    #: ``paused`` (OpenAPI ``MarketStatusQuery``) so a paused market keeps its subscription and
    #: its resting book, and its unpause is no late subscription.
    market_statuses: tuple[Literal["open", "unopened", "paused"], ...] = (
        "unopened",
        "open",
        "paused",
    )
    #: ``use_yes_price`` sent on every ``orderbook_delta`` subscribe (issue 11). True: NO-side
    #: levels come on the YES scale, Kalshi's announced default (the flag then goes away). The
    #: gatherer stores NO bids at NO prices (the REST book's convention) whatever it sends.
    use_yes_price: bool = True
    #: Multivariate (combo, ``KXMVE...``) markets (issue 11). ``exclude``: ``GET /markets`` is
    #: asked with ``mve_filter=exclude`` and none is subscribed or polled; ``include``: they are
    #: carried like ordinary markets (order book, snapshot polls) and their lifecycle channel
    #: ``multivariate_market_lifecycle`` (which ``market_lifecycle_v2`` leaves them out of) is
    #: subscribed, so new combos are opened as promptly as ordinary markets.
    mve_markets: Literal["exclude", "include"] = "exclude"
    #: Reconnect backoff (Full Jitter), forever.
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: SIGTERM: how long the writer may take to drain to the database before spooling.
    stop_timeout_s: float = 30.0
    #: Seconds without any data frame after which /health reports degraded (informational).
    stale_after_s: float = 120.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not _ID.match(self.gatherer_id):
            raise ConfigError("gatherer_id", "must match [A-Za-z0-9_.-]{1,64}")
        if not 1 <= self.connections <= 64:
            raise ConfigError("connections", f"must be between 1 and 64, got {self.connections}")
        if not 1 <= self.markets_per_subscription <= 10_000:
            raise ConfigError("markets_per_subscription", "must be between 1 and 10000")
        if self.snapshot_interval_s < 0:
            raise ConfigError("snapshot_interval_s", "must be >= 0 (0 disables the poller)")
        if not 1 <= self.snapshot_batch <= 1000:
            raise ConfigError("snapshot_batch", "must be between 1 and 1000")
        for name in ("reconcile_interval_s", "backoff_base_s", "stop_timeout_s", "stale_after_s"):
            _positive(name, getattr(self, name))
        if not 0 <= self.spool_max_bytes <= 1 << 50:
            raise ConfigError(
                "spool_max_bytes",
                f"must be 0 (no bound) or a byte count up to 2**50, got {self.spool_max_bytes}",
            )
        if self.backoff_cap_s < self.backoff_base_s:
            raise ConfigError("backoff_cap_s", "must be >= backoff_base_s")
        if self.mve_markets not in ("exclude", "include"):
            raise ConfigError("mve_markets", "must be exclude or include")
        if not self.market_statuses:
            raise ConfigError("market_statuses", "at least one status is required")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("log_level", "must be DEBUG, INFO, WARNING or ERROR")


def load(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> GathererConfig:
    """Load and validate; raises ``ConfigError`` naming the offending key."""
    if env is None:
        return load_config(GathererConfig, path)
    return load_config(GathererConfig, path, env=env)
