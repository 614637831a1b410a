"""Parser throughput: frames/s of parse_frame and WsProtocol.feed vs json.loads and orjson.loads.

All four run over the same seeded corpus of realistic frames (mostly order-book deltas, then
trades, tickers, snapshots) in the same process, best of several rounds; the ratios are the
figures to watch (absolute rates depend on the machine).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable

import orjson

from kalshi_data.kalshi.parse import DeadLetter, parse_frame
from kalshi_data.kalshi.wsproto import WsProtocol

N_FRAMES = 20_000
ROUNDS = 5
TICKERS = [f"KXBENCH-26JAN01-T{i}" for i in range(200)]


def _corpus(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    frames: list[bytes] = []
    for seq in range(1, n + 1):
        ticker = rng.choice(TICKERS)
        ts_ms = 1_767_225_600_000 + seq * 7
        kind = rng.random()
        if kind < 0.70:
            msg = {
                "market_ticker": ticker,
                "market_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "price_dollars": f"0.{rng.randint(1, 99):02d}00",
                "delta_fp": f"{rng.choice([-1, 1]) * rng.randint(1, 500)}.00",
                "side": rng.choice(["yes", "no"]),
                "ts": "2026-01-01T00:00:00Z",
                "ts_ms": ts_ms,
            }
            frame = {"type": "orderbook_delta", "sid": 1, "seq": seq, "msg": msg}
        elif kind < 0.85:
            yes = rng.randint(1, 99)
            msg = {
                "trade_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "market_ticker": ticker,
                "yes_price_dollars": f"0.{yes:02d}00",
                "no_price_dollars": f"0.{100 - yes:02d}00" if yes != 100 else "0.0000",
                "count_fp": f"{rng.randint(1, 1000)}.00",
                "taker_side": "yes",
                "taker_outcome_side": "yes",
                "taker_book_side": "bid",
                "is_block_trade": False,
                "ts": ts_ms // 1000,
                "ts_ms": ts_ms,
            }
            frame = {"type": "trade", "sid": 1, "seq": seq, "msg": msg}
        elif kind < 0.98:
            msg = {
                "market_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "market_ticker": ticker,
                "price_dollars": "0.4800",
                "yes_bid_dollars": "0.4500",
                "yes_ask_dollars": "0.5300",
                "volume_fp": "33896.00",
                "open_interest_fp": "20422.00",
                "dollar_volume": 16948,
                "dollar_open_interest": 10211,
                "yes_bid_size_fp": "300.00",
                "yes_ask_size_fp": "150.00",
                "last_trade_size_fp": "25.00",
                "ts": ts_ms // 1000,
                "ts_ms": ts_ms,
                "time": "2026-01-01T00:00:00Z",
            }
            frame = {"type": "ticker", "sid": 2, "msg": msg}
        else:
            levels = [[f"0.{p:02d}00", f"{rng.randint(1, 900)}.00"] for p in range(1, 60, 3)]
            msg = {"market_ticker": ticker, "yes_dollars_fp": levels, "no_dollars_fp": levels}
            frame = {"type": "orderbook_snapshot", "sid": 1, "seq": seq, "msg": msg}
        frames.append(orjson.dumps(frame))
    return frames


def _rate(fn: Callable[[bytes], object], frames: list[bytes]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for f in frames:
            fn(f)
        best = min(best, time.perf_counter() - started)
    return len(frames) / best


def main() -> None:
    """Print frames/s for each decoder and the parser's ratios to the baselines."""
    frames = _corpus(N_FRAMES)
    bad = [f for f in frames if isinstance(parse_frame(f), DeadLetter)]
    assert not bad, f"corpus frame rejected: {parse_frame(bad[0])}"

    proto = WsProtocol()
    proto.subscribe(["orderbook_delta", "trade"], TICKERS)
    proto.feed(b'{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}')

    def feed(frame: bytes) -> object:
        return proto.feed(frame)

    def fresh_feed(frame: bytes) -> object:
        return feed(frame)

    rates = {
        "json.loads": _rate(json.loads, frames),
        "orjson.loads": _rate(orjson.loads, frames),
        "parse_frame": _rate(parse_frame, frames),
    }
    # feed() tracks seq: replaying the corpus would be all duplicates, so time one pass per
    # fresh protocol state instead (still best of ROUNDS).
    best = float("inf")
    for _ in range(ROUNDS):
        proto.reset()
        proto.subscribe(["orderbook_delta"], TICKERS)
        proto.feed(b'{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}')
        started = time.perf_counter()
        for f in frames:
            fresh_feed(f)
        best = min(best, time.perf_counter() - started)
    rates["WsProtocol.feed"] = len(frames) / best

    print(f"corpus: {len(frames)} frames, {sum(map(len, frames)) / len(frames):.0f} B mean")
    for name, rate in rates.items():
        print(f"  {name:<16} {rate:>12,.0f} frames/s")
    print(f"parse_frame / json.loads   = {rates['parse_frame'] / rates['json.loads']:.2f}")
    print(f"parse_frame / orjson.loads = {rates['parse_frame'] / rates['orjson.loads']:.2f}")
    print(f"feed / json.loads          = {rates['WsProtocol.feed'] / rates['json.loads']:.2f}")


if __name__ == "__main__":
    main()
