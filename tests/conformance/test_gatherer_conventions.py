"""Issue 11 end to end: the gatherer against simulator modes that model published behaviour.

Each run compares the gatherer's database with the simulator's ground truth row for row, and
the order books it rebuilt with the REST book.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulator.rest import orderbook_fp
from simulator.server import Simulator
from tests.integration.gatherer_support import (
    assert_truth,
    config_data,
    gatherer,
    gatherer_db,
    query,
    quiesce,
    simulator,
    subscribed,
    wait_for,
)


def _levels(prices: list[int], counts: list[int]) -> dict[int, int]:
    return dict(zip(prices, counts, strict=True))


def books_from_db(dsn: str) -> dict[str, tuple[dict[int, int], dict[int, int]]]:
    """Each market's book: its last WebSocket snapshot plus the deltas received after it."""
    books: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
    marks: dict[str, tuple[Any, int]] = {}
    for ticker, yp, yc, np_, nc, received, seq in query(
        dsn,
        "SELECT ticker, yes_prices, yes_counts, no_prices, no_counts, received_at, seq"
        " FROM orderbook_snapshots WHERE source = 'ws' ORDER BY received_at, seq",
    ):
        books[ticker] = (_levels(yp, yc), _levels(np_, nc))
        marks[ticker] = (received, seq)
    for ticker, side, price, delta, received, seq in query(
        dsn,
        "SELECT ticker, side, price, delta, received_at, seq FROM orderbook_deltas"
        " ORDER BY received_at, seq",
    ):
        if ticker not in books or (received, seq) <= marks[ticker]:
            continue
        levels = books[ticker][0 if side == "yes" else 1]
        size = levels.get(price, 0) + delta
        if size:
            levels[price] = size
        else:
            levels.pop(price, None)
    return books


def rest_book(sim: Simulator, ticker: str) -> tuple[dict[int, int], dict[int, int]]:
    """The REST ``orderbook_fp`` of ``ticker`` as integer levels (NO bids at NO prices)."""
    fp = orderbook_fp(sim.exchange.markets[ticker])

    def side(rows: list[list[str]]) -> dict[int, int]:
        out = {}
        for p, c in rows:
            w, _, f = p.partition(".")
            cw, _, cf = c.partition(".")
            out[int(w) * 10_000 + int(f.ljust(4, "0"))] = int(cw) * 100 + int(cf.ljust(2, "0"))
        return out

    return side(fp["yes_dollars"]), side(fp["no_dollars"])


@pytest.mark.parametrize(
    ("sim_over", "gatherer_over"),
    [
        # Today: the flag honoured; the gatherer sends false, NO prices on the wire; seq from 1000.
        ({"price_mode": "flag", "first_seq": 1000}, {"use_yes_price": False}),
        # After the announced flip: YES scale always, the flag ignored.
        ({"price_mode": "yes_default"}, {"use_yes_price": True}),
    ],
    ids=["no-scale-first-seq-1000", "yes-default"],
)
async def test_issue11_conventions_capture_equal_truth_and_rest_book(
    fresh_db: str, tmp_path: Path, sim_over: dict[str, Any], gatherer_over: dict[str, Any]
) -> None:
    """Both NO-side conventions give the same stored rows (the truth's) and the REST book."""
    dsn = gatherer_db(fresh_db)
    async with (
        simulator(tmp_path, rate=800.0, lifecycle_share=0.005, **sim_over) as sim,
        gatherer(config_data(sim, dsn, tmp_path, **gatherer_over)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 3000, 30, "3000 events")
        await quiesce(sim, svc)
        books = books_from_db(dsn)
        assert svc.registry is not None
        carried = [t for t in books if t in svc.registry.markets]
        assert len(carried) >= 30, "too few order books captured"
        for ticker in carried:
            assert books[ticker] == rest_book(sim, ticker), ticker
        assert await run.finish() == 0
    assert_truth(dsn, tmp_path / "truth.jsonl")
    assert query(dsn, "SELECT count(*) FROM dead_letters")[0][0] == 0
    # Paused markets (carried by default) keep their books: an unpause is no late subscription,
    # and markets created mid-run are subscribed before they open (assert_truth: no gap at all).
    assert query(dsn, "SELECT count(*) FROM gaps WHERE how = 'late_subscribe'") == [(0,)]
    paused_listed = query(
        dsn, "SELECT count(DISTINCT ticker) FROM markets WHERE status = 'inactive'"
    )
    assert paused_listed[0][0] > 0, "the simulator should have paused markets"


async def test_issue11_errors_18_and_27_are_retried_without_loss(
    fresh_db: str, tmp_path: Path
) -> None:
    """get_snapshot refused with 27 (rate) then 18 (timeout), each carrying sid and seq: sent
    again, the gap recovers by snapshot (no resubscribe), only the skipped frames are missing."""
    from kalshi_data.testing.truth import compare
    from tests.integration.test_gatherer_faults import admin, markets_of_sid, orderbook_sid

    dsn = gatherer_db(fresh_db)
    async with (
        simulator(tmp_path, rate=800.0, markets=20, lifecycle_share=0.0) as sim,
        gatherer(config_data(sim, dsn, tmp_path)) as run,
    ):
        svc = run.service
        await wait_for(lambda: subscribed(svc), 30, "all subscriptions")
        conn_id, sid, _ = await orderbook_sid(sim)
        sid_markets = markets_of_sid(svc, sid)
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 500, 30, "traffic")
        await admin(sim, "POST", "command_error", {"conn": conn_id, "code": 27})
        await admin(sim, "POST", "command_error", {"conn": conn_id, "code": 18})
        await admin(sim, "POST", "skip_seq", {"conn": conn_id, "sid": sid, "n": 3})
        await wait_for(
            lambda: query(dsn, "SELECT count(*) FROM gaps WHERE state = 'recovered'")[0][0] == 1,
            30,
            "the gap to recover",
        )
        assert sim.ws.connections[conn_id].session.refused == 2
        await wait_for(lambda: sim.truth_lines >= 2500, 30, "more traffic")
        await quiesce(sim, svc)
        assert await run.finish() == 0
    report = compare(dsn, tmp_path / "truth.jsonl")
    for table, diff in report.items():
        assert not diff.extra, (table, diff.extra)
        if table != "orderbook_deltas":
            assert diff.exact, (table, diff.missing)
    missing = report["orderbook_deltas"].missing
    assert sum(missing.values()) == 3, missing
    assert {ident[0] for ident in missing} <= sid_markets
    hows = query(dsn, "SELECT how FROM gaps WHERE state = 'recovered'")
    assert hows == [("get_snapshot",)]
    assert query(dsn, "SELECT count(*) FROM gaps")[0][0] == 2  # one gap: open + recovered


def _mve(ident: tuple[Any, ...]) -> bool:
    return any(isinstance(v, str) and v.startswith("KXMVE") for v in ident)


def _firehose_up(svc: Any, channels: int) -> bool:
    manager = svc.manager
    if manager is None or not subscribed_or_none(svc):
        return False
    return len(manager.connections[0].session.firehose_sids) == channels


def subscribed_or_none(svc: Any) -> bool:
    """Every carried market is in an acknowledged subscription (any number of firehoses)."""
    manager, registry = svc.manager, svc.registry
    if manager is None or registry is None or not registry.loaded or not registry.markets:
        return False
    for conn in manager.connections:
        if not conn.up or conn.layout.placed != conn.layout.desired:
            return False
        if any(s.busy or s.sid is None for s in conn.layout.slots):
            return False
    return True


@pytest.mark.parametrize("policy", ["exclude", "include"])
async def test_issue11_mve_policy(fresh_db: str, tmp_path: Path, policy: str) -> None:
    """Combo markets, 10 per ordinary one: ``exclude`` asks mve_filter=exclude and carries
    none; ``include`` carries them all and opens new ones from their own lifecycle channel at
    once. Startup costs no request per combo event; the capture equals the truth."""
    from kalshi_data.testing.truth import compare

    dsn = gatherer_db(fresh_db)
    async with (
        simulator(tmp_path, rate=600.0, markets=40, mve_markets=400) as sim,
        gatherer(config_data(sim, dsn, tmp_path, mve_markets=policy)) as run,
    ):
        svc = run.service
        channels = 4 if policy == "include" else 3
        await wait_for(lambda: _firehose_up(svc, channels), 60, "all subscriptions")
        startup_requests = sim.rest.requests
        assert svc.registry is not None
        carried = set(svc.registry.markets)
        mve_carried = {t for t in carried if t.startswith("KXMVE")}
        if policy == "exclude":
            assert not mve_carried
        else:
            assert len(mve_carried) >= 400
        # 200 combo events: a request each would show here.
        assert startup_requests < 40, startup_requests
        sim.resume()
        await wait_for(lambda: sim.truth_lines >= 4000, 60, "4000 events")
        await quiesce(sim, svc)
        created_mve = {
            t
            for (t,) in query(
                dsn,
                "SELECT ticker FROM lifecycle_events WHERE event_type = 'created'"
                " AND ticker LIKE 'KXMVE%%'",
            )
        }
        if policy == "include":
            assert created_mve, "the run should create combo markets"
            assert created_mve <= set(svc.registry.markets)  # opened live, not at a reconcile
            assert svc.registry.reconciles == 1
        else:
            assert not created_mve
            assert not {t for t in svc.registry.markets if t.startswith("KXMVE")}
        assert await run.finish() == 0
    if policy == "include":
        assert_truth(dsn, tmp_path / "truth.jsonl")
        return
    report = compare(dsn, tmp_path / "truth.jsonl")
    for table, diff in report.items():
        assert not diff.extra, (table, diff.extra)
        missing = [i for i in diff.missing if not _mve(i)]
        assert not missing, (table, missing[:5])
    assert query(dsn, "SELECT count(*) FROM markets WHERE ticker LIKE 'KXMVE%%'")[0][0] == 0
