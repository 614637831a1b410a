"""``python -m deduplicator --config FILE`` (also ``kalshi-data dedup --config FILE``)."""

from __future__ import annotations

import argparse
import sys

from kalshi_data.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config (exit 2 naming a bad key), run; returns the exit code."""
    parser = argparse.ArgumentParser(prog="kalshi-data dedup", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="YAML config file (see examples/dedup.yaml)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from deduplicator.config import load  # noqa: PLC0415 (keep --help fast)
    from deduplicator.service import Deduplicator  # noqa: PLC0415
    from kalshi_data.jsonlog import setup_logging  # noqa: PLC0415

    try:
        cfg = load(args.config)
    except (ConfigError, OSError) as exc:
        print(f"kalshi-data dedup: {exc}", file=sys.stderr)
        return 2
    setup_logging("deduplicator", cfg.log_level)
    import uvloop  # noqa: PLC0415

    return int(uvloop.run(Deduplicator(cfg).run()))


if __name__ == "__main__":
    raise SystemExit(main())
