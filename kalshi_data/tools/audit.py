"""``kalshi-data audit``: production's trades checked against the exchange's own record.

For each closed window of exchange time (``window_s``, aligned to the epoch, at least
``settle_s`` old), the audit pages ``GET /markets/trades`` for ALL markets at once (the fewest
requests: one page holds up to 1,000 trades, kalshi-protocol.md §4) and compares every trade id
with production. Trades production lacks are written there with ``gatherer_id = 'rest_backfill'``
through the same identity as the deduplicator's merge (``tables.TRADES.production_key``, ``ON
CONFLICT DO NOTHING``), so a later WS copy from a gatherer's spool, or a rerun, never doubles
them. A backfilled row takes ``exchange_ts`` at millisecond precision: REST ``created_time``
carries microseconds while a WS trade carries ``ts_ms`` (issue 11 item 5), and the identity
includes ``exchange_ts``, so both copies must land on the same instant.

Kalshi moves trades older than its historical cutoff (``GET /historical/cutoff``,
``trades_created_ts``; about three months) out of ``/markets/trades`` into
``GET /historical/trades``: a window is split at the cutoff (:func:`split_window`) and each part
paged from its source, each trade kept by its exact ``created_time``, so none is taken twice or
missed. The cutoff is asked again after each window; a window it moved into is read again.

Resumable: every page commits its backfill, its counts and the window's watermark (source, split
and cursor of the next page, :class:`Watermark`) in one transaction; a window whose split has
changed since (the cutoff moved into it) starts over instead; a failed run leaves the window
``pending`` and the next run resumes at the watermark. Any exchange failure (429 / 5xx after the
shared retry gives up, network errors) leaves the window pending with ``last_error`` and ends the
run: the exchange is not answering, and later windows would fail the same way. Requests take
tokens from one bucket (:class:`~kalshi_data.resilience.TokenBucket`) and retry through
:func:`~kalshi_data.resilience.retry` (via :class:`~kalshi_data.kalshi.rest.KalshiRest`).

When a window is complete, its ``coverage`` rows get the order-book side: per market, the gap
windows no gatherer was free of (every peer in a gap at once), each closed by the market's next
snapshot in production. See docs/audit.md.

Layout (about 1,150 lines, STYLE habit 8): config, the pure cores (planning, reconciliation,
interval arithmetic, the live/historical split), the SQL, the shell and the CLI stay together so
one reading shows the whole invariant "a window is done only when every page was compared"; the
cores are the first split candidate (``_audit_core.py``), now that the file has grown.

Exit codes: 0 every window planned is done and nothing is missing after the backfill; 1 a window
stays pending (exchange or production failure) or trades are still missing; 2 bad configuration
or a permanent error (authentication, missing migration).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from kalshi_data.config import Secret, load_config
from kalshi_data.errors import ConfigError, KalshiDataError, TransientError, describe_error
from kalshi_data.kalshi.parse import DeadLetter, trade_from_rest
from kalshi_data.kalshi.rest import (
    DEFAULT_BASE_URL,
    DEFAULT_REQUEST_COST,
    BadResponse,
    KalshiRest,
    NotFound,
)
from kalshi_data.records import TradeRec
from kalshi_data.resilience import ErrorClass, RetryPolicy, TokenBucket, classify
from kalshi_data.tables import TRADES

log = logging.getLogger("kalshi_data.audit")

#: The provenance of a trade the audit wrote (``trades.gatherer_id``).
BACKFILL_ID = "rest_backfill"
TRADES_PATH = "/markets/trades"
HISTORICAL_TRADES_PATH = "/historical/trades"
CUTOFF_PATH = "/historical/cutoff"
HISTORICAL = "historical"
LIVE = "live"
#: the watermark of a window whose every page was read (only coverage and ``done`` remain)
COMPLETE = "complete"
#: restarts of one window because the historical cutoff moved while it was paged
MAX_CUTOFF_RESTARTS = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True, slots=True)
class AuditProduction:
    """Production database, as a ``kd_auditor`` member."""

    dsn: Secret
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class AuditKalshi:
    """The exchange's REST API. Market data needs no key; with one, every request is signed."""

    rest_url: str = DEFAULT_BASE_URL
    key_id: str | None = None
    private_key_file: Path | None = None
    #: REST budget in requests/s and its burst (shared by every page of the run).
    rate_per_s: float = 5.0
    burst: float = 10.0
    timeout_s: float = 15.0
    #: attempts per request through the shared retry (429, 5xx, network), then the window waits.
    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.rest_url.startswith(("http://", "https://")):
            raise ConfigError("kalshi.rest_url", "must be an http(s) URL")
        if (self.key_id is None) != (self.private_key_file is None):
            raise ConfigError("kalshi.key_id", "key_id and private_key_file go together")
        for name in ("rate_per_s", "burst", "timeout_s", "backoff_base_s", "backoff_cap_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"kalshi.{name}", "must be positive")
        if self.max_attempts < 1:
            raise ConfigError("kalshi.max_attempts", "must be at least 1")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ConfigError("kalshi.backoff_cap_s", "must be >= backoff_base_s")


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The whole audit configuration (see examples/audit.yaml)."""

    production: AuditProduction
    kalshi: AuditKalshi = field(default_factory=AuditKalshi)
    #: window length; divides a day so that ``coverage --day`` sees whole windows
    window_s: int = 3600
    #: a window is audited only this long after it ended (the exchange's record settles)
    settle_s: int = 600
    #: how far back the timer's runs look for windows never audited
    lookback_s: int = 86_400
    max_windows_per_run: int = 48
    #: trades per page (Kalshi's maximum is 1,000)
    page_limit: int = 1000
    #: gatherer ids whose gaps count for order-book coverage; empty = every gatherer the
    #: deduplicator has a cursor for (sync_cursors)
    gatherers: tuple[str, ...] = ()
    metrics_textfile: Path | None = None
    log_level: str = "INFO"
    #: the ``kalshi-data status`` section (health URLs, lag limit), validated by status.load
    status: Any = None

    def __post_init__(self) -> None:
        if self.window_s <= 0 or 86_400 % self.window_s:
            raise ConfigError("window_s", "must be a positive divisor of 86400")
        if self.settle_s < 0:
            raise ConfigError("settle_s", "must be >= 0")
        if self.lookback_s < self.window_s:
            raise ConfigError("lookback_s", "must be at least window_s")
        if self.max_windows_per_run < 1:
            raise ConfigError("max_windows_per_run", "must be at least 1")
        if not 1 <= self.page_limit <= 1000:
            raise ConfigError("page_limit", "must be between 1 and 1000")


def load(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> AuditConfig:
    """Load and validate; raises ``ConfigError`` naming the offending key."""
    return load_config(AuditConfig, path, env=env)


# ------------------------------------------------------------------------------- pure cores
def window_floor(ts_s: float, window_s: int) -> int:
    """The start of the window that holds ``ts_s`` (windows are aligned to the epoch)."""
    return int(ts_s // window_s) * window_s


def plan_windows(
    now_s: float,
    *,
    window_s: int,
    settle_s: int,
    lookback_s: int,
    limit: int,
    done: Iterable[int] = (),
    pending: Iterable[int] = (),
    since_s: float | None = None,
    until_s: float | None = None,
) -> list[int]:
    """Window starts to audit, oldest first, at most ``limit``.

    Only closed windows qualify (ended at least ``settle_s`` before ``now_s``). Without
    ``since_s``/``until_s``: every window of the last ``lookback_s`` not yet done, plus every
    pending window however old (a window is never given up silently). With them: every closed
    window overlapping ``[since_s, until_s)``, done or not (an on-demand re-audit).
    """
    last_start = window_floor(now_s - settle_s, window_s) - window_s  # newest closed window
    if since_s is not None or until_s is not None:
        lo = window_floor(since_s if since_s is not None else now_s - lookback_s, window_s)
        hi = until_s if until_s is not None else now_s
        starts = [s for s in range(lo, last_start + 1, window_s) if s < hi]
        return starts[:limit]
    done_set = set(done)
    lo = window_floor(now_s - lookback_s, window_s)
    wanted = {s for s in range(lo, last_start + 1, window_s) if s not in done_set}
    wanted |= {s for s in pending if s <= last_start}
    return sorted(wanted)[:limit]


def ms_instant(exchange_ts_us: int) -> int:
    """The trade time at millisecond precision (in microseconds): the WS ``ts_ms`` form."""
    return exchange_ts_us - exchange_ts_us % 1000


@dataclass(frozen=True, slots=True)
class Segment:
    """The part ``[lo_us, hi_us)`` of a window listed by one source (historical or live)."""

    source: str
    lo_us: int
    hi_us: int

    @property
    def path(self) -> str:
        """The endpoint that lists this part."""
        return HISTORICAL_TRADES_PATH if self.source == HISTORICAL else TRADES_PATH

    def query(self, limit: int) -> dict[str, Any]:
        """``min_ts``/``max_ts`` in whole seconds covering the part (the exact bound is applied
        client-side): ``max_ts`` a second past the end, whether Kalshi's bound is inclusive or
        exclusive."""
        return {
            "min_ts": self.lo_us // 1_000_000,
            "max_ts": -(-self.hi_us // 1_000_000),
            "limit": limit,
        }

    def holds(self, created_us: int) -> bool:
        """Whether a trade created at ``created_us`` (exact, µs) belongs to this part."""
        return self.lo_us <= created_us < self.hi_us


def split_window(start_s: int, end_s: int, cutoff_us: int | None) -> tuple[int, list[Segment]]:
    """The window ``[start_s, end_s)`` cut at the exchange's historical trade cutoff.

    Trades created before ``cutoff_us`` are listed only by ``/historical/trades``, the others
    only by ``/markets/trades`` (docs.kalshi.com, Historical Data). Returns the split instant
    (the cutoff clamped to the window; the window start when there is no partition) and the
    non-empty parts, historical first. Every instant of the window is in exactly one part, so a
    trade is never taken from both sources or from neither.
    """
    lo, hi = start_s * 1_000_000, end_s * 1_000_000
    split = lo if cutoff_us is None else min(max(cutoff_us, lo), hi)
    parts = [Segment(HISTORICAL, lo, split), Segment(LIVE, split, hi)]
    return split, [p for p in parts if p.hi_us > p.lo_us]


@dataclass(frozen=True, slots=True)
class Watermark:
    """Where a pending window resumes: the source of the next page, the split the window's
    pages were read with, and the next page's cursor (None = that source's first page)."""

    source: str  # historical | live | complete
    split_us: int | None  # None: an old, unprefixed watermark (every page was live)
    cursor: str | None

    def text(self) -> str:
        """The stored form: ``source|split_us|cursor``."""
        return f"{self.source}|{'' if self.split_us is None else self.split_us}|{self.cursor or ''}"

    @classmethod
    def parse(cls, text: str | None) -> Watermark | None:
        """The stored form back; an unprefixed value is a live cursor from before the
        historical partition was read (its window was paged from ``/markets/trades`` only)."""
        if text is None:
            return None
        source, sep, rest = text.partition("|")
        if not sep or source not in (HISTORICAL, LIVE, COMPLETE):
            return cls(LIVE, None, text or None)
        split, _, cursor = rest.partition("|")
        try:
            split_us = int(split) if split else None
        except ValueError:
            return cls(LIVE, None, text)
        return cls(source, split_us, cursor or None)

    def resumable(self, start_s: int, split_us: int) -> bool:
        """Whether pages read under this watermark are still right with today's split: the
        cutoff may have moved into the window since (a live part whose rest is now historical),
        and then the window starts over (its backfill stays; reruns count it, insert nothing)."""
        mine = start_s * 1_000_000 if self.split_us is None else self.split_us
        return mine == split_us


def parse_cutoff(body: Mapping[str, Any]) -> int:
    """``GET /historical/cutoff`` -> ``trades_created_ts`` in Unix microseconds."""
    raw = body.get("trades_created_ts")
    if not isinstance(raw, str):
        raise BadResponse(f"GET {CUTOFF_PATH}: no trades_created_ts", status=200, path=CUTOFF_PATH)
    try:
        return rfc3339_us(raw)
    except ValueError:
        raise BadResponse(
            f"GET {CUTOFF_PATH}: trades_created_ts is not a date-time", status=200, path=CUTOFF_PATH
        ) from None


def rfc3339_us(text: str) -> int:
    """Unix microseconds from an RFC 3339 date-time (fractions beyond µs are cut)."""
    head, dot, tail = text.partition(".")
    if dot:  # fromisoformat takes at most 6 fractional digits in every 3.11 form
        digits = len(tail) - len(tail.lstrip("0123456789"))
        frac, zone = tail[:digits], tail[digits:]
        text = f"{head}.{(frac + '000000')[:6]}{zone}"
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("no time zone")
    return (dt - _EPOCH) // timedelta(microseconds=1)


@dataclass
class PageTally:
    """What one page (or a whole window) held, per market."""

    exchange: Counter[str] = field(default_factory=Counter)
    live: Counter[str] = field(default_factory=Counter)
    backfilled: Counter[str] = field(default_factory=Counter)
    missing_after: Counter[str] = field(default_factory=Counter)

    def add(self, other: PageTally) -> None:
        """Fold another tally into this one."""
        self.exchange.update(other.exchange)
        self.live.update(other.live)
        self.backfilled.update(other.backfilled)
        self.missing_after.update(other.missing_after)

    def totals(self) -> dict[str, int]:
        """Window-wide sums."""
        return {
            "exchange_trades": sum(self.exchange.values()),
            "live_trades": sum(self.live.values()),
            "backfilled": sum(self.backfilled.values()),
            "missing_after": sum(self.missing_after.values()),
        }


def reconcile(
    exchange: Sequence[TradeRec], present: Mapping[uuid.UUID, str]
) -> tuple[list[TradeRec], PageTally]:
    """Compare one page of exchange trades with production, by trade id.

    Args:
        exchange: the page's trades (duplicates by id are counted once).
        present: trade id -> ``gatherer_id`` of the production row, for ids production holds.

    Returns:
        The trades production lacks (to backfill), and the tally: a trade present with the
        backfill's provenance counts as backfilled (an earlier run wrote it), any other present
        trade as captured live. The missing ones are not counted yet (the caller counts them
        backfilled or missing_after once the insert has answered).
    """
    tally = PageTally()
    missing: list[TradeRec] = []
    seen: set[uuid.UUID] = set()
    for t in exchange:
        if t.trade_id in seen:
            continue
        seen.add(t.trade_id)
        tally.exchange[t.ticker] += 1
        owner = present.get(t.trade_id)
        if owner is None:
            missing.append(t)
        elif owner == BACKFILL_ID:
            tally.backfilled[t.ticker] += 1
        else:
            tally.live[t.ticker] += 1
    return missing, tally


Interval = tuple[float, float]


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[1] > i[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def uncovered_intervals(
    gaps: Mapping[str, Iterable[Interval]], peers: Iterable[str]
) -> list[Interval]:
    """The times at which EVERY peer gatherer was in a gap on one market.

    Args:
        gaps: gatherer id -> its gap windows on the market ``(start, end)`` (any unit).
        peers: every gatherer that captures the market; one without gaps covers everything.

    Returns:
        The disjoint uncovered intervals, ascending.
    """
    peer_list = sorted(set(peers) | set(gaps))
    if not peer_list:
        return []
    acc: list[Interval] | None = None
    for p in peer_list:
        mine = _union(gaps.get(p, ()))
        acc = mine if acc is None else _intersect(acc, mine)
        if not acc:
            return []
    return acc or []


# ------------------------------------------------------------------------------------- SQL
_COLS = (*TRADES.column_names, "gatherer_id")
_PG_TYPES = {c.name: c.pgtype for c in TRADES.columns} | {"gatherer_id": "text"}
BACKFILL_SQL = (
    f"INSERT INTO trades ({', '.join(_COLS)}) "
    f"SELECT * FROM unnest({', '.join(f'${i}::{_PG_TYPES[c]}[]' for i, c in enumerate(_COLS, 1))}) "
    f"ON CONFLICT ({', '.join(TRADES.production_key)}) DO NOTHING RETURNING trade_id"
)
PRESENT_SQL = (
    "SELECT trade_id, gatherer_id FROM trades WHERE trade_id = ANY($1::uuid[]) "
    "AND exchange_ts >= $2 AND exchange_ts < $3"
)
WINDOW_ENSURE = (
    "INSERT INTO audit_windows (window_start, window_end) VALUES ($1, $2) "
    "ON CONFLICT (window_start) DO NOTHING"
)
WINDOW_READ = (
    "SELECT status, watermark, pages FROM audit_windows WHERE window_start = $1 FOR UPDATE"
)
WINDOW_RESET = (
    "UPDATE audit_windows SET status = 'pending', exchange_trades = 0, live_trades = 0, "
    "backfilled = 0, missing_after = 0, pages = 0, watermark = NULL, started_at = now(), "
    "finished_at = NULL, updated_at = now() WHERE window_start = $1"
)
WINDOW_PAGE = (
    "UPDATE audit_windows SET exchange_trades = exchange_trades + $2, "
    "live_trades = live_trades + $3, backfilled = backfilled + $4, "
    "missing_after = missing_after + $5, pages = pages + 1, watermark = $6, "
    "started_at = coalesce(started_at, now()), updated_at = now() WHERE window_start = $1"
)
WINDOW_FAILED = (
    "UPDATE audit_windows SET attempts = attempts + 1, last_error = $2, updated_at = now() "
    "WHERE window_start = $1"
)
WINDOW_DONE = (
    "UPDATE audit_windows SET status = 'done', watermark = NULL, last_error = NULL, "
    "attempts = attempts + 1, finished_at = now(), updated_at = now() WHERE window_start = $1"
)
COVERAGE_ADD = """
INSERT INTO coverage (window_start, ticker, exchange_trades, live_trades, backfilled, missing_after)
SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (window_start, ticker) DO UPDATE SET
    exchange_trades = coverage.exchange_trades + EXCLUDED.exchange_trades,
    live_trades = coverage.live_trades + EXCLUDED.live_trades,
    backfilled = coverage.backfilled + EXCLUDED.backfilled,
    missing_after = coverage.missing_after + EXCLUDED.missing_after,
    computed_at = now()
"""
COVERAGE_GAPS = """
INSERT INTO coverage (window_start, ticker, uncovered_gaps, uncovered_gap_s)
SELECT $1, * FROM unnest($2::text[], $3::int[], $4::float8[])
ON CONFLICT (window_start, ticker) DO UPDATE SET
    uncovered_gaps = EXCLUDED.uncovered_gaps, uncovered_gap_s = EXCLUDED.uncovered_gap_s,
    computed_at = now()
"""
COVERAGE_CLEAR_GAPS = (
    "UPDATE coverage SET uncovered_gaps = 0, uncovered_gap_s = 0 WHERE window_start = $1"
)
COVERAGE_DELETE = "DELETE FROM coverage WHERE window_start = $1"
#: Order-book gap windows per (gatherer, market) that can overlap [$1, $2): from detection to
#: the market's next snapshot in production (any source), else the recovery, else open.
GAP_WINDOWS = """
SELECT o.gatherer_id, m.ticker, o.detected_at,
       coalesce(
           (SELECT min(s.exchange_ts) FROM orderbook_snapshots s
            WHERE s.ticker = m.ticker AND s.exchange_ts >= date_trunc('second', o.detected_at)
              AND s.exchange_ts < $2::timestamptz + interval '1 day'),
           r.recovered_at) AS closed_at
FROM gaps o
CROSS JOIN LATERAL unnest(o.markets) AS m(ticker)
LEFT JOIN gaps r ON r.gap_id = o.gap_id AND r.state = 'recovered'
WHERE o.state = 'open' AND o.channel = 'orderbook_delta' AND o.detected_at < $2::timestamptz
  AND coalesce(r.recovered_at, 'infinity') > $1::timestamptz - interval '1 day'
"""
PEERS = "SELECT DISTINCT gatherer_id FROM sync_cursors"
#: Session advisory lock, released when the connection closes (also on a crash).
LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('kalshi_data.audit'))"
PENDING_OR_DONE = "SELECT window_start, status FROM audit_windows"
SUMMARY = """
SELECT coalesce(sum(exchange_trades - live_trades) FILTER (WHERE status = 'done'), 0),
       coalesce(sum(backfilled) FILTER (WHERE status = 'done'), 0),
       coalesce(sum(missing_after) FILTER (WHERE status = 'done'), 0),
       count(*) FILTER (WHERE status = 'pending'),
       max(window_end) FILTER (WHERE status = 'done'),
       min(window_start) FILTER (WHERE status = 'pending')
FROM audit_windows
"""


def ts(seconds: float) -> datetime:
    """A timestamptz value for asyncpg."""
    return _EPOCH + timedelta(seconds=seconds)


def _us(dt: datetime) -> float:
    return (dt - _EPOCH) / timedelta(seconds=1)


# ------------------------------------------------------------------------------------ shell
class WindowPending(KalshiDataError):
    """A window could not be finished (it stays pending); ``cause`` says why."""

    def __init__(self, start: int, cause: BaseException) -> None:
        super().__init__(f"window {ts(start).isoformat()} pending: {describe_error(cause)}")
        self.start = start
        self.cause = cause


@dataclass
class WindowResult:
    """One audited window."""

    start: int
    end: int
    tally: PageTally
    pages: int
    status: str  # done | pending | dry-run
    uncovered: dict[str, list[Interval]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "window_start": ts(self.start).isoformat(),
            "window_end": ts(self.end).isoformat(),
            "status": self.status,
            "pages": self.pages,
            **self.tally.totals(),
            "uncovered_gaps": sum(len(v) for v in self.uncovered.values()),
        }


@dataclass
class AuditRun:
    """What :func:`run_audit` did."""

    windows: list[WindowResult] = field(default_factory=list)
    planned: int = 0
    pending_error: str | None = None
    #: the failure that left a window pending is one a retry cannot fix (auth, bad request)
    permanent: bool = False
    dry_run: bool = False

    @property
    def complete(self) -> bool:
        """Every planned window finished (or was dry-run) and nothing is missing after it."""
        return (
            self.pending_error is None
            and len(self.windows) == self.planned
            and all(w.status != "pending" for w in self.windows)
            and not any(w.tally.totals()["missing_after"] for w in self.windows)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "planned": self.planned,
            "dry_run": self.dry_run,
            "complete": self.complete,
            "pending_error": self.pending_error,
            "windows": [w.as_dict() for w in self.windows],
        }


def _rest(cfg: AuditConfig) -> KalshiRest:
    k = cfg.kalshi
    signer = None
    if k.key_id is not None and k.private_key_file is not None:
        from kalshi_data.kalshi.signer import Signer  # noqa: PLC0415 (only with a key)

        signer = Signer.from_pem_file(k.key_id, k.private_key_file)
    bucket = TokenBucket(k.rate_per_s * DEFAULT_REQUEST_COST, k.burst * DEFAULT_REQUEST_COST)

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log.info("exchange retry %d after %s (in %.2fs)", attempt, type(exc).__name__, delay)

    return KalshiRest(
        k.rest_url,
        signer=signer,
        bucket=bucket,
        policy=RetryPolicy(
            base_s=k.backoff_base_s, cap_s=k.backoff_cap_s, max_attempts=k.max_attempts
        ),
        timeout_s=k.timeout_s,
        request_cost=DEFAULT_REQUEST_COST,
        on_retry=on_retry,
    )


def _parse_page(page: Mapping[str, Any], segment: Segment) -> tuple[list[TradeRec], Counter[str]]:
    """The page's trades inside ``segment`` (by their exact ``created_time``), at millisecond
    precision, and the unparseable ones by ticker."""
    items = page.get("trades")
    if not isinstance(items, list):
        raise BadResponse(
            f"GET {segment.path}: no list under 'trades'", status=200, path=segment.path
        )
    out: list[TradeRec] = []
    bad: Counter[str] = Counter()
    for item in items:
        rec = trade_from_rest(item)
        if isinstance(rec, DeadLetter):
            ticker = item.get("ticker") if isinstance(item, dict) else None
            bad[ticker if isinstance(ticker, str) else "?"] += 1
            log.warning("unparseable exchange trade: %s", rec.reason)
            continue
        # The source boundary is the exact creation time (the cutoff need not be a whole
        # millisecond); the window bounds are whole seconds, so ms-flooring keeps the window.
        created = _created_us(item, rec.exchange_ts_us)
        rec.exchange_ts_us = ms_instant(rec.exchange_ts_us)
        if segment.holds(created):  # the query is asked a second wide (Segment.query)
            out.append(rec)
    return out, bad


def _created_us(item: Mapping[str, Any], fallback: int) -> int:
    raw = item.get("created_time")
    if isinstance(raw, str):
        try:
            return rfc3339_us(raw)
        except ValueError:
            pass
    return fallback


def _columns(trades: Sequence[TradeRec], received_at: datetime) -> list[list[Any]]:
    rows = [t.row(0) for t in trades]
    cols: list[list[Any]] = (
        [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in TRADES.column_names]
    )
    names = TRADES.column_names
    cols[names.index("exchange_ts")] = [
        _EPOCH + timedelta(microseconds=v) for v in cols[names.index("exchange_ts")]
    ]
    cols[names.index("received_at")] = [received_at] * len(rows)
    cols.append([BACKFILL_ID] * len(rows))
    return cols


def _next_cursor(page: Mapping[str, Any], cursor: str | None, path: str) -> str | None:
    """The next page's cursor (None on the last page, whose cursor is ``""``, §4)."""
    nxt = page.get("cursor")
    if not isinstance(nxt, str) or not nxt:
        return None
    if nxt == cursor:
        raise BadResponse(f"GET {path}: cursor repeats", status=200, path=path)
    return nxt


@dataclass
class HistoricalCutoff:
    """The exchange's historical trade cutoff as one run knows it (fetched when first needed,
    again after every window to check it did not move while the window was paged)."""

    us: int | None = None
    known: bool = False
    #: False once the exchange answered 404: no historical partition (an older API, a stub)
    supported: bool = True

    async def fetch(self, rest: KalshiRest) -> int | None:
        """Ask the exchange again (404: no partition from now on, logged once)."""
        if not self.supported:
            return None
        try:
            body = await rest.get_json(CUTOFF_PATH)
        except NotFound:
            self.supported, self.known, self.us = False, True, None
            log.info(
                "GET %s answers 404: no historical partition, every window is read from %s",
                CUTOFF_PATH,
                TRADES_PATH,
            )
            return None
        self.us, self.known = parse_cutoff(body), True
        return self.us

    async def current(self, rest: KalshiRest) -> int | None:
        """The known cutoff, fetched the first time."""
        return self.us if self.known else await self.fetch(rest)


class CutoffMoving(TransientError):
    """The historical cutoff kept moving into a window while it was paged (the window stays
    pending; the next run tries again)."""


def _next_watermark(segments: Sequence[Segment], i: int, split: int, nxt: str | None) -> str:
    if nxt is not None:
        return Watermark(segments[i].source, split, nxt).text()
    if i + 1 < len(segments):
        return Watermark(segments[i + 1].source, split, None).text()
    return Watermark(COMPLETE, split, None).text()


async def _gap_coverage(
    conn: asyncpg.Connection, start: int, end: int, peers: Sequence[str]
) -> dict[str, list[Interval]]:
    """Per market: the uncovered order-book gap intervals (epoch seconds) inside the window."""
    rows = await conn.fetch(GAP_WINDOWS, ts(start), ts(end))
    by_market: dict[str, dict[str, list[Interval]]] = defaultdict(lambda: defaultdict(list))
    for gatherer, ticker, detected, closed in rows:
        t0 = max(float(start), _us(detected))
        t1 = min(float(end), _us(closed) if closed is not None else float(end))
        if t1 > t0:
            by_market[ticker][gatherer].append((t0, t1))
    out: dict[str, list[Interval]] = {}
    for ticker, gaps in by_market.items():
        hit = uncovered_intervals(gaps, peers)
        if hit:
            out[ticker] = hit
    return out


async def audit_window(
    conn: asyncpg.Connection,
    rest: KalshiRest,
    cfg: AuditConfig,
    start: int,
    *,
    peers: Sequence[str],
    dry_run: bool = False,
    restart: bool = False,
    cutoff: HistoricalCutoff | None = None,
) -> WindowResult:
    """Audit one window: page the exchange, compare, backfill, count; coverage at the end.

    The part before the historical cutoff is paged from ``/historical/trades``, the rest from
    ``/markets/trades`` (:func:`split_window`); the watermark names the source of the next page.

    Args:
        restart: start over even when the window is done or has a watermark (re-audit).
        cutoff: the run's view of the historical cutoff (shared by its windows).

    Raises:
        WindowPending: the exchange (or production) failed; the window stays pending and the
            next run resumes from the last committed page.
    """
    end = start + cfg.window_s
    cutoff = cutoff if cutoff is not None else HistoricalCutoff()
    total = PageTally()
    mark, pages = (None, 0) if dry_run else await _open_window(conn, start, end, restart)
    try:
        restarts = 0
        while True:
            split, segments = split_window(start, end, await cutoff.current(rest))
            if pages and (mark is None or not mark.resumable(start, split)):
                # Pages were read with another split (the cutoff moved into the window since),
                # or by a version that left no watermark after the last page: start over.
                log.info("window %s starts over: its pages predate the cutoff", ts(start))
                await _reset(conn, start)
                mark, pages = None, 0
            pages += await _read_segments(
                conn, rest, cfg, start, end, split, segments, mark, total, dry_run
            )
            # The cutoff may have moved while the window was paged (its live part's oldest pages
            # come last): check once, and read the window again with the new split if it did.
            if not await _cutoff_moved(cutoff, rest, start, end, split):
                break
            restarts += 1
            _check_restarts(restarts)
            log.info("window %s starts over: the historical cutoff moved while paging", ts(start))
            if not dry_run:
                await _reset(conn, start)
            mark, pages, total = None, 0, PageTally()
        uncovered = await _gap_coverage(conn, start, end, peers)
        if not dry_run:
            await _finish_window(conn, start, uncovered)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if not dry_run and not conn.is_closed():
            try:
                await conn.execute(WINDOW_FAILED, ts(start), describe_error(exc))
            except Exception:  # production itself failed: the window stays pending anyway
                log.warning("could not record the failure of window %s", ts(start).isoformat())
        raise WindowPending(start, exc) from exc
    return WindowResult(start, end, total, pages, "dry-run" if dry_run else "done", uncovered)


async def _open_window(
    conn: asyncpg.Connection, start: int, end: int, restart: bool
) -> tuple[Watermark | None, int]:
    """Ensure the window's row; its watermark and page count, or a fresh start (a re-audit,
    or a window already done)."""
    async with conn.transaction():
        await conn.execute(WINDOW_ENSURE, ts(start), ts(end))
        row = await conn.fetchrow(WINDOW_READ, ts(start))
        assert row is not None
        if restart or row["status"] == "done":
            await _reset(conn, start)
            return None, 0
        return Watermark.parse(row["watermark"]), int(row["pages"])


async def _finish_window(
    conn: asyncpg.Connection, start: int, uncovered: dict[str, list[Interval]]
) -> None:
    """Write the window's uncovered gap coverage and mark it done, in one transaction."""
    async with conn.transaction():
        await conn.execute(COVERAGE_CLEAR_GAPS, ts(start))
        if uncovered:
            tickers = sorted(uncovered)
            await conn.execute(
                COVERAGE_GAPS,
                ts(start),
                tickers,
                [len(uncovered[t]) for t in tickers],
                [sum(hi - lo for lo, hi in uncovered[t]) for t in tickers],
            )
        await conn.execute(WINDOW_DONE, ts(start))


async def _cutoff_moved(
    cutoff: HistoricalCutoff, rest: KalshiRest, start: int, end: int, split: int
) -> bool:
    """Ask for the cutoff again: did the window's split change while it was paged?"""
    if not cutoff.supported:
        return False
    return split_window(start, end, await cutoff.fetch(rest))[0] != split


def _check_restarts(restarts: int) -> None:
    if restarts > MAX_CUTOFF_RESTARTS:
        raise CutoffMoving(f"the historical cutoff moved {restarts} times in the window")


async def _reset(conn: asyncpg.Connection, start: int) -> None:
    async with conn.transaction():
        await conn.execute(WINDOW_RESET, ts(start))
        await conn.execute(COVERAGE_DELETE, ts(start))


async def _read_segments(
    conn: asyncpg.Connection,
    rest: KalshiRest,
    cfg: AuditConfig,
    start: int,
    end: int,
    split: int,
    segments: Sequence[Segment],
    mark: Watermark | None,
    total: PageTally,
    dry_run: bool,
) -> int:
    """Page every part of the window from the watermark on; each page commits the next one.
    Returns the number of pages read."""
    pages = 0
    first = 0
    if mark is not None:
        sources = [seg.source for seg in segments]
        first = len(segments) if mark.source == COMPLETE else sources.index(mark.source)
    for i in range(first, len(segments)):
        seg = segments[i]
        cursor = mark.cursor if mark is not None and i == first else None
        params = seg.query(cfg.page_limit)
        while True:
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            page = await rest.get_json(seg.path, query)
            trades, bad = _parse_page(page, seg)
            nxt = _next_cursor(page, cursor, seg.path)
            tally = await _page(
                conn,
                trades,
                start,
                end,
                dry_run=dry_run,
                watermark=_next_watermark(segments, i, split, nxt),
                bad=bad,
            )
            total.add(tally)
            pages += 1
            cursor = nxt
            if cursor is None:
                break
    return pages


async def _page(
    conn: asyncpg.Connection,
    trades: Sequence[TradeRec],
    start: int,
    end: int,
    *,
    dry_run: bool,
    watermark: str,
    bad: Counter[str],
) -> PageTally:
    """Compare one page, backfill what is missing, commit counts and watermark together."""
    ids = list({t.trade_id for t in trades})
    lo, hi = ts(start - 1), ts(end + 1)  # the partition bound: same window, any precision
    rows = await conn.fetch(PRESENT_SQL, ids, lo, hi) if ids else []
    present = {r[0]: r[1] for r in rows}
    missing, tally = reconcile(trades, present)
    tally.missing_after.update(bad)
    if dry_run:
        for t in missing:  # what a real run would write
            tally.backfilled[t.ticker] += 1
        return tally
    async with conn.transaction():
        inserted: set[uuid.UUID] = set()
        if missing:
            got = await conn.fetch(BACKFILL_SQL, *_columns(missing, datetime.now(UTC)))
            inserted = {r[0] for r in got}
        conflicted = [t.trade_id for t in missing if t.trade_id not in inserted]
        again = (
            {r[0]: r[1] for r in await conn.fetch(PRESENT_SQL, conflicted, lo, hi)}
            if conflicted
            else {}
        )
        for t in missing:
            if t.trade_id in inserted:
                tally.backfilled[t.ticker] += 1
            elif t.trade_id in again:  # a gatherer's copy arrived between the two queries
                tally.live[t.ticker] += 1
            else:
                tally.missing_after[t.ticker] += 1
        tickers = sorted(tally.exchange | tally.missing_after)
        if tickers:
            await conn.execute(
                COVERAGE_ADD,
                ts(start),
                tickers,
                [tally.exchange[t] for t in tickers],
                [tally.live[t] for t in tickers],
                [tally.backfilled[t] for t in tickers],
                [tally.missing_after[t] for t in tickers],
            )
        sums = tally.totals()
        await conn.execute(
            WINDOW_PAGE,
            ts(start),
            sums["exchange_trades"],
            sums["live_trades"],
            sums["backfilled"],
            sums["missing_after"],
            watermark,
        )
    if missing:
        log.info(
            "window %s: %d trades missing live, %d backfilled",
            ts(start).isoformat(),
            len(missing),
            sum(1 for t in missing if t.trade_id in inserted),
        )
    return tally


async def connect(cfg: AuditConfig) -> asyncpg.Connection:
    """A production connection for the audit (or ``status``)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        cfg.production.dsn.reveal(),
        timeout=cfg.production.connect_timeout_s,
        command_timeout=cfg.production.statement_timeout_s,
        server_settings={"application_name": "kalshi-audit", "jit": "off"},
    )
    return conn


async def run_audit(
    cfg: AuditConfig,
    *,
    now: float | None = None,
    since: float | None = None,
    until: float | None = None,
    dry_run: bool = False,
) -> AuditRun:
    """Plan and audit windows; stops at the first window left pending.

    Args:
        now: the wall clock in Unix seconds (tests pass their own).
        since, until: re-audit the closed windows overlapping ``[since, until)``.
        dry_run: compare and report only; production is not written.
    """
    now_s = time.time() if now is None else now
    run = AuditRun(dry_run=dry_run)
    conn = await connect(cfg)
    try:
        # One run at a time (a manual run beside the timer's): pages commit counts as they go.
        if not await conn.fetchval(LOCK_SQL):
            run.pending_error = "another audit run holds the lock"
            return run
        states = {int(_us(r[0])): r[1] for r in await conn.fetch(PENDING_OR_DONE)}
        starts = plan_windows(
            now_s,
            window_s=cfg.window_s,
            settle_s=cfg.settle_s,
            lookback_s=cfg.lookback_s,
            limit=cfg.max_windows_per_run,
            done=[s for s, st in states.items() if st == "done"],
            pending=[s for s, st in states.items() if st == "pending"],
            since_s=since,
            until_s=until,
        )
        run.planned = len(starts)
        peers = list(cfg.gatherers) or [r[0] for r in await conn.fetch(PEERS)]
        explicit = since is not None or until is not None
        cutoff = HistoricalCutoff()
        async with _rest(cfg) as rest:
            for start in starts:
                try:
                    result = await audit_window(
                        conn,
                        rest,
                        cfg,
                        start,
                        peers=peers,
                        dry_run=dry_run,
                        restart=explicit and states.get(start) == "done",
                        cutoff=cutoff,
                    )
                except WindowPending as exc:
                    run.permanent = classify(exc.cause) is ErrorClass.PERMANENT
                    (log.error if run.permanent else log.warning)("%s", exc)
                    run.pending_error = describe_error(exc.cause)
                    run.windows.append(
                        WindowResult(start, start + cfg.window_s, PageTally(), 0, "pending")
                    )
                    break
                run.windows.append(result)
        if cfg.metrics_textfile is not None and not dry_run:
            await write_metrics(conn, cfg.metrics_textfile, now_s)
    finally:
        await conn.close()
    return run


async def write_metrics(conn: asyncpg.Connection, path: Path, now_s: float) -> None:
    """The audit's metrics for node-exporter's textfile collector (the job is not a server)."""
    row = await conn.fetchrow(SUMMARY)
    assert row is not None
    missing_live, backfilled, missing_after, pending, done_until, oldest_pending = row
    lag = now_s - (_us(done_until) if done_until is not None else now_s)
    if oldest_pending is not None:  # lag = how far behind the oldest unfinished window is
        lag = max(lag, now_s - _us(oldest_pending))
    path.parent.mkdir(parents=True, exist_ok=True)
    path_tmp = path.with_suffix(".tmp")
    path_tmp.write_text(
        render_metrics(
            missing_live=int(missing_live),
            backfilled=int(backfilled),
            missing_after=int(missing_after),
            pending=int(pending),
            lag_s=lag,
            run_ts=now_s,
        )
    )
    os.replace(path_tmp, path)


def render_metrics(
    *,
    missing_live: int,
    backfilled: int,
    missing_after: int,
    pending: int,
    lag_s: float,
    run_ts: float,
) -> str:
    """The textfile exposition (metrics.txt lists these names)."""
    metrics = [
        (
            "audit_trades_missing_live_total",
            "counter",
            "Exchange trades no gatherer captured live (audited windows).",
            missing_live,
        ),
        (
            "audit_trades_backfilled_total",
            "counter",
            "Trades the audit wrote into production from the exchange's REST history.",
            backfilled,
        ),
        (
            "audit_trades_missing_after_backfill",
            "gauge",
            "Exchange trades still missing from production after the backfill.",
            missing_after,
        ),
        ("audit_windows_pending", "gauge", "Audit windows not yet complete.", pending),
        (
            "audit_window_lag_seconds",
            "gauge",
            "Now minus the end of the newest audited window (or start of the oldest pending).",
            round(lag_s, 3),
        ),
        ("audit_last_run_timestamp_seconds", "gauge", "When the audit last ran.", round(run_ts, 3)),
    ]
    lines = []
    for name, kind, help_text, value in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- CLI
def parse_when(text: str) -> float:
    """Unix seconds from ``1733140800`` or an ISO 8601 time (UTC when no offset is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def main(argv: list[str]) -> int:
    """``kalshi-data audit --config FILE [--since T] [--until T] [--dry-run]``."""
    parser = argparse.ArgumentParser(prog="kalshi-data audit", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--since", help="re-audit windows from this time (ISO 8601 or Unix s)")
    parser.add_argument("--until", help="... up to this time (default: the newest closed window)")
    parser.add_argument("--dry-run", action="store_true", help="compare only, write nothing")
    parser.add_argument("--now", type=float, help="the clock, Unix seconds (tests)")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except (ConfigError, OSError, ValueError) as exc:
        print(f"kalshi-data audit: {describe_error(exc)}", file=sys.stderr)
        return 2
    from kalshi_data.jsonlog import setup_logging  # noqa: PLC0415

    setup_logging("audit", cfg.log_level)
    try:
        run = asyncio.run(
            run_audit(cfg, now=args.now, since=since, until=until, dry_run=args.dry_run)
        )
    except Exception as exc:  # production unreachable, missing migration, bad credentials
        print(f"kalshi-data audit: {describe_error(exc)}", file=sys.stderr)
        return 1 if classify(exc) is ErrorClass.RETRYABLE else 2
    print(json.dumps(run.as_dict()))
    if run.pending_error is not None:
        print(f"kalshi-data audit: window left pending: {run.pending_error}", file=sys.stderr)
    if run.permanent:
        return 2
    return 0 if run.complete else 1
