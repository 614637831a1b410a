"""The seeded activity model: determinism, book consistency, message shapes."""

from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal

import orjson

from simulator import shapes
from simulator.book import Book
from simulator.fixed import DOLLAR
from simulator.market import Emitted, Exchange

NOW_S = 1_700_000_000


def run(seed: int, steps: int, markets: int = 300, **kw) -> tuple[Exchange, list[Emitted]]:
    ex = Exchange(seed, markets, NOW_S, **kw)
    out: list[Emitted] = []
    for i in range(steps):
        ex.step(NOW_S * 1000 + i // 10, out)
    return ex, out


def test_same_seed_same_stream_other_seed_differs():
    """Same seed and clock readings give a byte-identical stream; another seed does not."""
    _, a = run(7, 5000)
    _, b = run(7, 5000)
    _, c = run(8, 5000)
    assert orjson.dumps(a) == orjson.dumps(b)
    assert orjson.dumps(a) != orjson.dumps(c)


def test_deltas_replayed_on_initial_books_equal_final_books():
    """A snapshot at any moment equals the initial book plus every delta emitted so far."""
    ex0 = Exchange(3, 300, NOW_S)
    books = {t: (dict(m.book.yes), dict(m.book.no)) for t, m in ex0.markets.items()}
    ex, out = run(3, 20_000, lifecycle_share=0.02)
    for frame_type, ticker, msg in out:
        if frame_type != "orderbook_delta":
            continue
        assert ticker is not None
        yes, no = books.setdefault(ticker, ({}, {}))
        side = yes if msg["side"] == "yes" else no
        price = int(Decimal(msg["price_dollars"]) * DOLLAR)
        size = side.get(price, 0) + int(Decimal(msg["delta_fp"]) * 100)
        assert size >= 0
        if size:
            side[price] = size
        else:
            side.pop(price, None)
    for t, m in ex.markets.items():
        assert books.get(t, ({}, {})) == (m.book.yes, m.book.no), t


def test_books_never_cross_and_prices_sit_on_the_tick_grid():
    """YES bid + NO bid stay below one dollar; every price is a multiple of the market tick."""
    ex, _ = run(5, 20_000)
    for m in ex.market_list:
        by, bn = m.book.best("yes"), m.book.best("no")
        if by and bn:
            assert by[0] + bn[0] < DOLLAR
        for p in [*m.book.yes, *m.book.no]:
            assert p % m.tick == 0
            assert 0 < p < DOLLAR
    assert {m.structure for m in ex.market_list} == {"linear_cent", "deci_cent"}


def test_stream_mix_is_heavy_tailed_and_has_same_ms_duplicates():
    """Activity is skewed (top 1% of markets carry a large share) and identical deltas occur."""
    _, out = run(11, 50_000, markets=1000)
    deltas = [(t, orjson.dumps(m)) for ft, t, m in out if ft == "orderbook_delta"]
    per_market = Counter(t for t, _ in deltas)
    top = sum(n for _, n in per_market.most_common(10))
    assert top > 0.2 * len(deltas)
    dup_pairs = sum(1 for a, b in itertools.pairwise(deltas) if a == b)
    assert dup_pairs > 0.002 * len(deltas)
    assert any(
        m["delta_fp"].split(".")[1] not in ("00",) for ft, _, m in out if ft == "orderbook_delta"
    )


def test_lifecycle_churn_creates_and_settles_markets():
    """New events announce themselves and markets move through determined and settled."""
    ex, out = run(2, 30_000, lifecycle_share=0.05)
    kinds = Counter(m.get("event_type", ft) for ft, _, m in out if ft != "orderbook_delta")
    for k in ("created", "activated", "deactivated", "close_date_updated", "determined", "settled"):
        assert kinds[k] > 0, k
    assert kinds["event_lifecycle"] > 0
    created = [m for ft, _, m in out if m.get("event_type") == "created"]
    assert all(m["market_ticker"] in ex.markets for m in created)
    assert {"additional_metadata", "open_ts", "close_ts"} <= set(created[0])


def test_trade_takes_liquidity_delta_before_trade():
    """Each non-block trade follows a negative delta of the same count on the maker's side."""
    _, out = run(4, 20_000)
    checked = 0
    for i, (ft, _, m) in enumerate(out):
        if ft != "trade" or m["is_block_trade"]:
            continue
        ft0, _, d = out[i - 1]
        assert ft0 == "orderbook_delta"
        assert d["delta_fp"] == "-" + m["count_fp"]
        maker = "no" if m["taker_outcome_side"] == "yes" else "yes"
        assert d["side"] == maker
        price = m["no_price_dollars"] if maker == "no" else m["yes_price_dollars"]
        assert d["price_dollars"] == price
        checked += 1
    assert checked > 100


def test_ticker_msg_has_every_required_field():
    """Ticker, trade and snapshot msgs carry the §3.6/§3.7/§3.5 fields."""
    ex, out = run(6, 2000)
    ticker = next(m for ft, _, m in out if ft == "ticker")
    assert set(ticker) == {
        "market_id", "market_ticker", "price_dollars", "yes_bid_dollars", "yes_ask_dollars",
        "volume_fp", "open_interest_fp", "dollar_volume", "dollar_open_interest",
        "yes_bid_size_fp", "yes_ask_size_fp", "last_trade_size_fp", "ts", "ts_ms", "time",
    }  # fmt: skip
    trade = next(m for ft, _, m in out if ft == "trade")
    assert {"trade_id", "taker_book_side", "taker_outcome_side", "ts_ms"} <= set(trade)
    empty = ex.market_list[0]
    empty.book = Book()
    assert set(shapes.snapshot_msg(empty)) == {"market_ticker", "market_id"}


def test_issue11_mve_markets_have_their_own_lifecycle_channel() -> None:
    """Combo markets carry their collection and legs; their lifecycle frames are
    ``multivariate_market_lifecycle``, never ``market_lifecycle_v2``; 0 combos keeps a seed's
    ordinary stream unchanged."""
    from simulator.market import MVE_LIFECYCLE

    ex = Exchange(5, 50, NOW_S, mve_markets=100)
    mve = [m for m in ex.market_list if m.mve_collection is not None]
    assert len(mve) == 100
    assert all(m.ticker.startswith("KXMVE") and len(m.mve_legs) >= 2 for m in mve)
    assert all(ex.events[m.event_ticker].mve for m in mve)
    out: list[Emitted] = []
    for i in range(20_000):
        ex.step(NOW_S * 1000 + i, out)
    lifecycle = [(t, k) for t, k, _ in out if t in ("market_lifecycle_v2", MVE_LIFECYCLE)]
    assert any(t == MVE_LIFECYCLE for t, _ in lifecycle)
    for frame_type, ticker in lifecycle:
        assert (frame_type == MVE_LIFECYCLE) == (ticker or "").startswith("KXMVE")
    a, b = Exchange(5, 50, NOW_S), Exchange(5, 50, NOW_S)
    out_a: list[Emitted] = []
    out_b: list[Emitted] = []
    for i in range(500):
        a.step(NOW_S * 1000 + i, out_a)
        b.step(NOW_S * 1000 + i, out_b)
    assert out_a == out_b


def test_a_market_created_mid_run_opens_at_its_announced_open_ts_and_not_before():
    """``created`` announces ``open_ts`` at least OPEN_LEAD_S[0] s ahead; no activation, delta,
    trade or ticker of that market comes before it, and most of them do open within the run."""
    from simulator.market import OPEN_LEAD_S

    ex = Exchange(11, 60, NOW_S, lifecycle_share=0.05)
    out: list[Emitted] = []
    announced: dict[str, int] = {}
    created_at: dict[str, int] = {}
    first_activity: dict[str, int] = {}
    activated_at: dict[str, int] = {}
    for i in range(120_000):
        now_ms = NOW_S * 1000 + i * 2  # 240 s of exchange time
        out.clear()
        ex.step(now_ms, out)
        for frame_type, ticker, msg in out:
            if ticker is None:
                continue
            if frame_type == "market_lifecycle_v2" and msg.get("event_type") == "created":
                announced[ticker] = int(msg["open_ts"])
                created_at[ticker] = now_ms // 1000
            elif frame_type == "market_lifecycle_v2" and msg.get("event_type") == "activated":
                activated_at.setdefault(ticker, now_ms // 1000)
            elif frame_type in ("orderbook_delta", "trade", "ticker"):
                first_activity.setdefault(ticker, now_ms // 1000)
    assert len(announced) >= 10, "too few markets created mid-run to mean anything"
    for ticker, open_ts in announced.items():
        assert open_ts - created_at[ticker] >= OPEN_LEAD_S[0], ticker
        if ticker in activated_at:
            assert activated_at[ticker] >= open_ts, ticker
        if ticker in first_activity:
            assert ticker in activated_at, ticker
            assert first_activity[ticker] >= activated_at[ticker], ticker
    opened = [t for t in announced if t in activated_at]
    assert len(opened) >= len(announced) // 2, (len(opened), len(announced))
