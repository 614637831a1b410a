"""The audit's pure cores: window planning, reconciliation by trade id, uncovered gap windows."""

from __future__ import annotations

import uuid

import pytest

from kalshi_data.config import load_config
from kalshi_data.errors import ConfigError
from kalshi_data.records import TradeRec
from kalshi_data.tools.audit import (
    BACKFILL_ID,
    AuditConfig,
    load,
    ms_instant,
    plan_windows,
    reconcile,
    render_metrics,
    uncovered_intervals,
    window_floor,
)

NOW = 1_000_000 * 3600 + 1234.5  # an arbitrary instant; only offsets from it matter


def _trade(ticker: str) -> TradeRec:
    return TradeRec(uuid.uuid4(), ticker, 1_000_000, 5000, 5000, 100, "yes", "bid", "yes", False)


def test_window_floor_aligns_to_the_epoch() -> None:
    """A time maps to the start of its window."""
    assert window_floor(7199.9, 3600) == 3600
    assert window_floor(7200, 3600) == 7200


def test_plan_only_closed_windows_not_done_oldest_first() -> None:
    """The timer plans every closed, settled, undone window of the lookback, oldest first."""
    top = window_floor(NOW - 600, 3600) - 3600
    starts = plan_windows(
        NOW, window_s=3600, settle_s=600, lookback_s=4 * 3600, limit=10, done=[top - 3600]
    )
    assert starts == sorted(starts)
    assert top in starts
    assert top - 3600 not in starts
    assert all(s + 3600 <= NOW - 600 for s in starts)
    assert len(starts) == 3  # 4 closed windows in the lookback, one done


def test_plan_keeps_old_pending_windows_and_respects_the_limit() -> None:
    """A pending window older than the lookback is still planned (never given up); limit caps."""
    old = window_floor(NOW, 3600) - 100 * 3600
    starts = plan_windows(NOW, window_s=3600, settle_s=0, lookback_s=3600, limit=1, pending=[old])
    assert starts == [old]


def test_plan_explicit_range_reaudits_done_windows() -> None:
    """--since/--until plan every closed window overlapping the range, done or not."""
    base = window_floor(NOW, 3600) - 5 * 3600
    starts = plan_windows(
        NOW,
        window_s=3600,
        settle_s=0,
        lookback_s=3600,
        limit=48,
        done=[base],
        since_s=base + 10,
        until_s=base + 2 * 3600,
    )
    assert starts == [base, base + 3600]


def test_reconcile_by_trade_id_and_provenance() -> None:
    """Absent ids are to backfill; present ones count live, or backfilled by an earlier run."""
    a, b, c = _trade("M-A"), _trade("M-A"), _trade("M-B")
    missing, tally = reconcile([a, b, c, a], {a.trade_id: "g1", b.trade_id: BACKFILL_ID})
    assert missing == [c]
    assert tally.exchange == {"M-A": 2, "M-B": 1}
    assert tally.live == {"M-A": 1}
    assert tally.backfilled == {"M-A": 1}


def test_ms_instant_matches_the_ws_identity() -> None:
    """REST microseconds become the WS ts_ms instant."""
    assert ms_instant(1_733_000_000_667_166) == 1_733_000_000_667_000


def test_uncovered_only_when_every_peer_is_in_a_gap() -> None:
    """The intersection over all peers of each peer's gap windows."""
    gaps = {"g1": [(0.0, 10.0), (20.0, 30.0)], "g2": [(5.0, 25.0)], "g3": [(0.0, 40.0)]}
    assert uncovered_intervals(gaps, ["g1", "g2", "g3"]) == [(5.0, 10.0), (20.0, 25.0)]
    assert uncovered_intervals(gaps, ["g1", "g2", "g3", "g4"]) == []  # g4 had no gap
    assert uncovered_intervals({"g1": [(1.0, 2.0)]}, ["g1"]) == [(1.0, 2.0)]


def test_config_errors_name_the_key() -> None:
    """Bad values fail at start naming the key."""
    base = {"production": {"dsn": "postgresql://x"}}
    with pytest.raises(ConfigError, match="window_s"):
        load_config(AuditConfig, None, data={**base, "window_s": 7000}, env={})
    with pytest.raises(ConfigError, match="page_limit"):
        load_config(AuditConfig, None, data={**base, "page_limit": 5000}, env={})
    with pytest.raises(ConfigError, match="kalshi.key_id"):
        load_config(AuditConfig, None, data={**base, "kalshi": {"key_id": "k"}}, env={})
    with pytest.raises(ConfigError, match="production"):
        load(None, env={})


def test_metrics_text_names() -> None:
    """The textfile carries the metric names the alerts use."""
    text = render_metrics(
        missing_live=3, backfilled=3, missing_after=0, pending=1, lag_s=10.0, run_ts=5.0
    )
    for name in (
        "audit_trades_missing_live_total 3",
        "audit_trades_backfilled_total 3",
        "audit_trades_missing_after_backfill 0",
        "audit_windows_pending 1",
        "audit_window_lag_seconds 10.0",
        "audit_last_run_timestamp_seconds 5.0",
    ):
        assert name in text


def test_example_config_loads_for_audit_and_status() -> None:
    """examples/audit.yaml is valid for both commands (the DSN secret overridden)."""
    from pathlib import Path

    from kalshi_data.tools import status

    path = Path(__file__).resolve().parents[2] / "examples" / "audit.yaml"
    env = {"KALSHI_DATA_PRODUCTION__DSN": "postgresql://x"}
    cfg = load(path, env=env)
    assert cfg.window_s == 3600
    assert cfg.page_limit == 1000
    st = status.load(path, env=env)
    assert [g.id for g in st.gatherers] == ["g1", "g2", "g3"]
