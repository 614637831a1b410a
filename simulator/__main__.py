"""``kalshi-data sim`` / ``python -m simulator``: run the local Kalshi exchange.

Prints one JSON line on stdout once listening::

    {"rest_url": ..., "ws_url": ..., "admin_url": ..., "key_id": ..., "private_key_file": ...}

SIGTERM/SIGINT close connections and flush the truth file; exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import orjson

from simulator.config import (
    DEFAULT_AUTH_SKEW_S,
    DEFAULT_HOST,
    DEFAULT_MARKETS,
    DEFAULT_MAX_MARKETS_PER_SUB,
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_RATE,
    DEFAULT_REST_BUCKET_TOKENS,
    DEFAULT_REST_TOKENS_PER_S,
    SimConfig,
)
from simulator.server import Simulator


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (see docs/simulator.md)."""
    p = argparse.ArgumentParser(prog="kalshi-data sim", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=0, help="REST + WebSocket port (0 = any free)")
    p.add_argument("--admin-port", type=int, default=0, help="admin API port (0 = any free)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--markets", type=int, default=DEFAULT_MARKETS)
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="data messages/s in total")
    p.add_argument("--truth", type=Path, default=None, help="ground-truth JSON Lines file")
    p.add_argument("--key-id", default=None)
    p.add_argument("--public-key", type=Path, default=None, help="PEM file of the public key")
    p.add_argument("--workdir", type=Path, default=None, help="where a generated key goes")
    p.add_argument("--max-markets-per-sub", type=int, default=DEFAULT_MAX_MARKETS_PER_SUB)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--ping-interval", type=float, default=DEFAULT_PING_INTERVAL_S)
    p.add_argument("--auth-skew", type=float, default=DEFAULT_AUTH_SKEW_S)
    p.add_argument(
        "--rest-rate",
        type=float,
        default=DEFAULT_REST_TOKENS_PER_S,
        help="REST read tokens/s (10 per request; 0 = unlimited)",
    )
    p.add_argument("--rest-burst", type=float, default=DEFAULT_REST_BUCKET_TOKENS)
    p.add_argument(
        "--control-frames-consume-seq",
        action="store_true",
        help="ok/unsubscribed replies take a number from the sid's seq counter",
    )
    p.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="N",
        help="pre-generate N events at start and emit those (no lifecycle; 0 = live model)",
    )
    p.add_argument("--first-seq", type=int, default=1, help="seq of a subscription's first frame")
    p.add_argument(
        "--price-mode",
        choices=("flag", "yes_default"),
        default="flag",
        help="use_yes_price honoured (default false), or YES scale always with the flag ignored",
    )
    p.add_argument(
        "--mve-markets", type=int, default=0, help="multivariate (combo) markets besides --markets"
    )
    p.add_argument(
        "--no-orderbook-auth",
        action="store_true",
        help="serve the REST order books unsigned (the OpenAPI spec requires auth)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Validate flags into a :class:`SimConfig` (raises ValueError naming the field)."""
    if (args.key_id is None) != (args.public_key is None):
        raise ValueError("--key-id and --public-key go together")
    return SimConfig(
        host=args.host,
        port=args.port,
        admin_port=args.admin_port,
        seed=args.seed,
        markets=args.markets,
        rate=args.rate,
        truth_path=args.truth,
        key_id=args.key_id,
        public_key_pem=args.public_key.read_bytes() if args.public_key is not None else None,
        workdir=args.workdir,
        max_markets_per_sub=args.max_markets_per_sub,
        duration_s=args.duration,
        ping_interval_s=args.ping_interval,
        auth_skew_s=args.auth_skew,
        rest_tokens_per_s=args.rest_rate,
        rest_bucket_tokens=args.rest_burst,
        control_frames_consume_seq=args.control_frames_consume_seq,
        replay=args.replay,
        first_seq=args.first_seq,
        price_mode=args.price_mode,
        mve_markets=args.mve_markets,
        orderbook_auth=not args.no_orderbook_auth,
    )


async def run(config: SimConfig) -> int:
    """Start, print the URLs line, serve until a signal or ``--duration``, stop."""
    sim = Simulator(config)
    await sim.start()
    line = {
        "rest_url": sim.rest_url,
        "ws_url": sim.ws_url,
        "admin_url": sim.admin_url,
        "key_id": sim.key_id,
        "private_key_file": str(sim.private_key_path) if sim.private_key_path else None,
    }
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [
        asyncio.create_task(stop.wait(), name="sim-signal"),
        asyncio.create_task(sim.wait_stopped(), name="sim-stopped"),
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await sim.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``kalshi-data sim`` and ``python -m simulator``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"kalshi-data sim: error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)

        runner: contextlib.AbstractContextManager[asyncio.Runner] = asyncio.Runner(
            loop_factory=uvloop.new_event_loop
        )
    except ImportError:
        runner = asyncio.Runner()
    with runner as r:
        return r.run(run(config))


if __name__ == "__main__":
    raise SystemExit(main())
