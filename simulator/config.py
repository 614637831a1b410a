"""The simulator's configuration: one frozen value object, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MARKETS = 2000
DEFAULT_RATE = 200.0
DEFAULT_PING_INTERVAL_S = 10.0
DEFAULT_AUTH_SKEW_S = 30.0
#: Kalshi's Basic tier: 200 read tokens/s, 10 tokens per request = 20 requests/s.
DEFAULT_REST_TOKENS_PER_S = 200.0
DEFAULT_REST_BUCKET_TOKENS = 400.0
DEFAULT_REST_COST = 10.0
DEFAULT_MAX_MARKETS_PER_SUB = 2500
#: Frames queued for one connection before its subscriptions die with error 25.
DEFAULT_MAX_BUFFERED_FRAMES = 200_000
DEFAULT_TRADES_KEPT = 500_000
#: ``use_yes_price`` handling: honour the flag (today) or YES scale always (after the flip).
PRICE_MODES = ("flag", "yes_default")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything a simulator run needs; all fields have working defaults.

    Attributes:
        host: address every listener binds (tests and the demo use 127.0.0.1).
        port: REST + WebSocket port (0 = pick a free one).
        admin_port: admin API port (0 = pick a free one); the admin API lives under ``/admin``.
        seed: seeds the whole activity model; same seed, same stream (timestamps aside).
        markets: markets in the initial catalogue.
        rate: total data messages per second across all markets.
        truth_path: where to append the ground-truth JSON Lines (None = no truth file).
        key_id / public_key_pem: the accepted API key; None = generate an RSA-2048 pair in workdir.
        workdir: where generated keys go (None = a fresh temporary folder).
        max_markets_per_sub: a subscription may hold at most this many markets (error 26).
        duration_s: stop by itself after this many seconds (None = run until stopped).
        ping_interval_s: server WebSocket Ping period (payload ``heartbeat``).
        auth_skew_s: accepted distance between KALSHI-ACCESS-TIMESTAMP and the server clock.
        rest_tokens_per_s / rest_bucket_tokens / rest_cost: REST read token bucket (rate 0 = off).
        control_frames_consume_seq: ``ok``/``unsubscribed`` take a number from the sid's counter.
        max_buffered_frames: per-connection send buffer bound before error 25.
        lifecycle_share: probability that an activity step is a lifecycle step instead.
        duplicate_delta_share: share of order placements emitted twice in the same millisecond.
        trades_kept: trades remembered for ``GET /markets/trades`` (oldest forgotten first).
        replay: pre-generate this many events at start and emit them instead of running the
            activity model live (0 = live). Replay mode has no lifecycle steps (a fixed set of
            markets) and costs a few µs per message instead of ~15 (docs/simulator.md).
        first_seq: the ``seq`` of a subscription's first sequenced frame (Kalshi requires seq
            but does not promise it starts at 1; a client must take the snapshot as baseline).
        price_mode: ``flag``: ``use_yes_price`` is honoured, default false (NO-side levels in
            NO prices, Kalshi today); ``yes_default``: the announced future, YES-scale prices on
            the NO side always, the flag ignored.
        mve_markets: multivariate (combo, ``KXMVE...``) markets besides ``markets``; they are
            listed by ``GET /markets`` unless ``mve_filter=exclude``, left out of ``GET /events``
            and ``market_lifecycle_v2``, and announced on ``multivariate_market_lifecycle``.
        orderbook_auth: ``GET /markets/{t}/orderbook`` and ``/markets/orderbooks`` need signed
            requests (401 otherwise), as the OpenAPI spec marks them.
        historical_cutoff_us: trades created before this (Unix µs) are served by
            ``GET /historical/trades`` only (None = no historical partition; admin
            ``historical_cutoff`` moves it).
    """

    host: str = DEFAULT_HOST
    port: int = 0
    admin_port: int = 0
    seed: int = 1
    markets: int = DEFAULT_MARKETS
    rate: float = DEFAULT_RATE
    truth_path: Path | None = None
    key_id: str | None = None
    public_key_pem: bytes | None = None
    workdir: Path | None = None
    max_markets_per_sub: int = DEFAULT_MAX_MARKETS_PER_SUB
    duration_s: float | None = None
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S
    auth_skew_s: float = DEFAULT_AUTH_SKEW_S
    rest_tokens_per_s: float = DEFAULT_REST_TOKENS_PER_S
    rest_bucket_tokens: float = DEFAULT_REST_BUCKET_TOKENS
    rest_cost: float = DEFAULT_REST_COST
    control_frames_consume_seq: bool = False
    max_buffered_frames: int = DEFAULT_MAX_BUFFERED_FRAMES
    lifecycle_share: float = 0.003
    duplicate_delta_share: float = 0.01
    trades_kept: int = DEFAULT_TRADES_KEPT
    replay: int = 0
    first_seq: int = 1
    price_mode: str = "flag"
    mve_markets: int = 0
    orderbook_auth: bool = True
    historical_cutoff_us: int | None = None

    def __post_init__(self) -> None:
        """Reject impossible values, naming the field."""
        checks: list[tuple[bool, str]] = [
            (0 <= self.port <= 65535, "port"),
            (0 <= self.admin_port <= 65535, "admin_port"),
            (self.markets >= 1, "markets"),
            (self.rate >= 0, "rate"),
            (self.max_markets_per_sub >= 1, "max_markets_per_sub"),
            (self.duration_s is None or self.duration_s > 0, "duration_s"),
            (self.ping_interval_s > 0, "ping_interval_s"),
            (self.auth_skew_s >= 0, "auth_skew_s"),
            (self.rest_tokens_per_s >= 0, "rest_tokens_per_s"),
            (self.rest_bucket_tokens >= self.rest_cost > 0, "rest_bucket_tokens"),
            (self.max_buffered_frames >= 1, "max_buffered_frames"),
            (0 <= self.lifecycle_share < 1, "lifecycle_share"),
            (0 <= self.duplicate_delta_share < 1, "duplicate_delta_share"),
            (self.trades_kept >= 1, "trades_kept"),
            (self.replay >= 0, "replay"),
            (self.first_seq >= 1, "first_seq"),
            (self.price_mode in PRICE_MODES, "price_mode"),
            (self.mve_markets >= 0, "mve_markets"),
            ((self.key_id is None) == (self.public_key_pem is None), "key_id/public_key_pem"),
        ]
        for ok, name in checks:
            if not ok:
                raise ValueError(f"simulator config: invalid {name}")
