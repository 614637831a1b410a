"""Every Prometheus metric the deduplicator exports, defined in one place (names are an interface:
``monitoring/`` rules and dashboards use them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class DedupMetrics:
    """The deduplicator's metric families, registered in their own registry."""

    instance_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        gt = ("gatherer", "table")
        self.sync_lag = Gauge(
            "dedup_sync_lag_seconds",
            "Data freshness: now minus received_at of the newest row synced (0 when caught up)",
            gt,
            registry=r,
        )
        self.backlog = Gauge(
            "dedup_backlog_rows", "Rows written by a gatherer and not yet synced", gt, registry=r
        )
        self.rows_read = Counter("dedup_rows_read", "Rows read from gatherers", gt, registry=r)
        self.rows_written = Counter(
            "dedup_rows_written", "Rows new to production", ("table",), registry=r
        )
        self.unique_rows = Counter(
            "dedup_unique_rows",
            "Rows a gatherer contributed first (its unique contribution)",
            gt,
            registry=r,
        )
        self.duplicate_ratio = Gauge(
            "dedup_duplicate_ratio",
            "Share of rows read that production already had (about 2/3 with 3 healthy gatherers)",
            ("table",),
            registry=r,
        )
        self.is_leader = Gauge(
            "dedup_is_leader", "1 while this instance holds the lease", ("instance_id",), registry=r
        )
        self.leader_epoch = Gauge(
            "dedup_leader_epoch", "Fencing epoch held (0 when standby)", registry=r
        )
        self.gatherer_up = Gauge(
            "dedup_gatherer_up", "1 when the gatherer database answers", ("gatherer",), registry=r
        )
        self.production_errors = Counter(
            "dedup_production_errors", "Failed production transactions", ("kind",), registry=r
        )
        self.uncovered_gaps = Gauge(
            "dedup_uncovered_gaps",
            "Open gaps of a gatherer for which no other gatherer has a clean copy",
            ("gatherer",),
            registry=r,
        )
        self.breaker_state = Gauge(
            "dedup_breaker_state", "0 closed, 1 half-open, 2 open", ("dependency",), registry=r
        )
        self.batch_seconds = Histogram(
            "dedup_batch_seconds",
            "Time to merge one batch into production",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.cursor_rescans = Counter(
            "dedup_cursor_rescans",
            "Cursors reset because a gatherer database was rebuilt or restored",
            gt,
            registry=r,
        )
        self.seen_skipped = Counter(
            "dedup_seen_skipped_rows",
            "Rows not staged because this process had already committed their identity",
            gt,
            registry=r,
        )
        self.direct_conflicts = Counter(
            "dedup_direct_copy_conflicts",
            "Direct COPYs into production that met an existing row and were staged instead",
            gt,
            registry=r,
        )
        self.seen_cache_rows = Gauge(
            "dedup_seen_cache_rows", "Identity digests held by the seen-identity filter", registry=r
        )
        # partition upkeep (deduplicator/upkeep.py)
        self.partition_default_rows = Gauge(
            "dedup_partition_default_rows",
            "Rows in a table's default partition after the last upkeep run (0 when healthy)",
            ("table",),
            registry=r,
        )
        self.partition_upkeep_last_success = Gauge(
            "dedup_partition_upkeep_last_success_timestamp_seconds",
            "End of the last successful partition upkeep run",
            registry=r,
        )
        self.is_leader.labels(self.instance_id).set(0)
        self._read: dict[str, float] = {}
        self._new: dict[str, float] = {}

    def preinit(self, gatherers: list[str], tables: list[str]) -> None:
        """Create every (gatherer, table) child of the event counters at 0, so that increase()
        sees the first event (a series born at 1 has no increase)."""
        for g in gatherers:
            for t in tables:
                self.cursor_rescans.labels(g, t)

    def record_merge(self, gatherer: str, table: str, read: int, inserted: int) -> None:
        """Count one merged batch and refresh the table's running duplicate ratio."""
        self.rows_read.labels(gatherer, table).inc(read)
        self.unique_rows.labels(gatherer, table).inc(inserted)
        self.rows_written.labels(table).inc(inserted)
        self._read[table] = self._read.get(table, 0.0) + read
        self._new[table] = self._new.get(table, 0.0) + inserted
        if self._read[table]:
            self.duplicate_ratio.labels(table).set(1.0 - self._new[table] / self._read[table])
