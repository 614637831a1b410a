"""Deduplicator configuration: frozen dataclasses loaded by the shared config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kalshi_data.config import Secret, load_config


@dataclass(frozen=True, slots=True)
class ProductionConfig:
    """Production database. ``dsn`` may list several hosts with target_session_attrs=read-write."""

    dsn: Secret
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class GathererSource:
    """One gatherer database, read with a select-only role."""

    id: str
    dsn: Secret
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Health and metrics endpoint."""

    listen: str = "127.0.0.1:9090"


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """The whole deduplicator configuration (see examples/dedup.yaml)."""

    instance_id: str
    production: ProductionConfig
    gatherers: tuple[GathererSource, ...]
    http: HttpConfig = field(default_factory=HttpConfig)
    poll_interval_s: float = 1.0
    batch_rows: int = 50_000
    batch_bytes: int = 64 * 1024 * 1024
    #: Identity digests of recently merged rows kept in memory (about 100 bytes each), so the
    #: other gatherers' copies skip staging; 0 turns the filter off (deduplicator/seen.py).
    seen_cache_rows: int = 1_000_000
    lease_ttl_s: float = 6.0
    lease_poll_s: float = 1.0
    breaker_failures: int = 3
    breaker_reset_s: float = 5.0
    backoff_cap_s: float = 10.0
    log_level: str = "INFO"


def load(path: str | Path | None) -> DedupConfig:
    """Load and validate; raises ``ConfigError`` naming the offending key."""
    cfg = load_config(DedupConfig, path)
    ids = [g.id for g in cfg.gatherers]
    if not ids:
        from kalshi_data.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("gatherers", "at least one gatherer is required")
    if len(set(ids)) != len(ids):
        from kalshi_data.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("gatherers", f"duplicate gatherer ids: {ids}")
    return cfg
