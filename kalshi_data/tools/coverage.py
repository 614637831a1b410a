"""``kalshi-data coverage --config FILE --day D [--market T] [--json]``: the audit's coverage table.

One row per audited window x market of the UTC day ``D`` (``2026-12-01``; ``today`` and
``yesterday`` work too): trades on the exchange, captured live, backfilled, still missing, and the
uncovered order-book gap windows. A last row sums the day. Reads production only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from kalshi_data.errors import ConfigError, describe_error
from kalshi_data.tools.audit import AuditConfig, connect, load

QUERY = """
SELECT c.window_start, c.ticker, c.exchange_trades, c.live_trades, c.backfilled, c.missing_after,
       c.uncovered_gaps, c.uncovered_gap_s, w.status
FROM coverage c JOIN audit_windows w USING (window_start)
WHERE c.window_start >= $1 AND c.window_start < $2 AND ($3::text IS NULL OR c.ticker = $3)
ORDER BY c.window_start, c.ticker
"""
COLUMNS = (
    "window_start",
    "ticker",
    "exchange_trades",
    "live_trades",
    "backfilled",
    "missing_after",
    "uncovered_gaps",
    "uncovered_gap_s",
    "window_status",
)


def parse_day(text: str, *, today: date) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (relative to ``today``, a UTC date)."""
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    return date.fromisoformat(text)


async def fetch(cfg: AuditConfig, day: date, market: str | None) -> list[dict[str, Any]]:
    """The day's coverage rows as dicts (``COLUMNS``)."""
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    conn = await connect(cfg)
    try:
        rows = await conn.fetch(QUERY, lo, lo + timedelta(days=1), market)
    finally:
        await conn.close()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def render(rows: list[dict[str, Any]], day: date) -> str:
    """A text table with a total row."""
    from io import StringIO  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    t = Table(title=f"coverage {day.isoformat()} (UTC)")
    for col in ("window", "market", "exchange", "live", "backfilled", "missing", "gaps", "gap s"):
        t.add_column(col, justify="left" if col in ("window", "market") else "right")
    sums = [0, 0, 0, 0, 0, 0.0]
    for r in rows:
        vals = [r[c] for c in COLUMNS[2:8]]
        sums = [a + b for a, b in zip(sums, vals, strict=True)]
        mark = "" if r["window_status"] == "done" else " (pending)"
        t.add_row(
            r["window_start"].strftime("%H:%M") + mark,
            r["ticker"],
            *(str(v) for v in vals[:5]),
            f"{vals[5]:.1f}",
        )
    t.add_row("total", "", *(str(int(v)) for v in sums[:5]), f"{sums[5]:.1f}")
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False).print(t)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """Print the coverage of one day; exit 0 (1 when a trade is still missing), 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="kalshi-data coverage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--day", required=True, help="UTC day: YYYY-MM-DD, today, yesterday")
    parser.add_argument("--market", help="one market ticker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
        day = parse_day(args.day, today=datetime.now(UTC).date())
    except (ConfigError, OSError, ValueError) as exc:
        print(f"kalshi-data coverage: {describe_error(exc)}", file=sys.stderr)
        return 2
    rows = asyncio.run(fetch(cfg, day, args.market))
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        print(render(rows, day), end="")
    return 1 if any(r["missing_after"] for r in rows) else 0
