"""Every Prometheus metric the gatherer exports, defined in one place.

Names are an interface: alert rules and dashboards in ``monitoring/`` use them, and a test checks
that each name listed in ``monitoring/metrics.txt`` is exported. Labels are bounded: ``gatherer``
(one value per process), ``channel`` (four WS channels), ``table`` (tables.py), ``source``
(``ws``/``rest``), ``endpoint`` (a fixed set of REST paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class GathererMetrics:
    """The gatherer's metric families, registered in their own registry."""

    gatherer_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        g = ("gatherer",)
        self.messages = Counter(
            "gatherer_messages", "WebSocket data frames received", [*g, "channel"], registry=r
        )
        self.rows_written = Counter(
            "gatherer_rows_written",
            "Rows committed to the local database",
            [*g, "table"],
            registry=r,
        )
        self.gaps = Counter("gatherer_gaps", "Sequence gaps detected", g, registry=r)
        self.resyncs = Counter(
            "gatherer_resyncs", "Resyncs (snapshot or resubscribe)", g, registry=r
        )
        self.reconnects = Counter("gatherer_reconnects", "WebSocket reconnects", g, registry=r)
        self.dead_letters = Counter(
            "gatherer_dead_letters",
            "Rejected frames stored in dead_letters",
            [*g, "source"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            "gatherer_spool_bytes", "Bytes waiting in the disk spool", g, registry=r
        )
        self.spool_max_bytes = Gauge(
            "gatherer_spool_max_bytes",
            "The disk spool's bound, spool_max_bytes (0: no bound)",
            g,
            registry=r,
        )
        self.spool_full = Gauge(
            "gatherer_spool_full",
            "1 while the spool is full (bound reached or disk refusing) and reading is paused",
            g,
            registry=r,
        )
        self.spool_full_episodes = Counter(
            "gatherer_spool_full_episodes",
            "Times the spool became full (back-pressure: the gatherer stopped reading)",
            g,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gatherer_queue_depth", "Rows waiting in the writer queue", [*g, "table"], registry=r
        )
        self.write_seconds = Histogram(
            "gatherer_write_seconds",
            "Time to commit one batch to the local database",
            g,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.ws_up = Gauge("gatherer_ws_connections_up", "WebSocket connections up", g, registry=r)
        self.ws_configured = Gauge(
            "gatherer_ws_connections_configured", "WebSocket connections configured", g, registry=r
        )
        self.last_message_age = Gauge(
            "gatherer_last_message_age_seconds", "Seconds since the last data frame", g, registry=r
        )
        self.db_up = Gauge(
            "gatherer_db_up", "1 when the local database accepts writes", g, registry=r
        )
        self.markets = Gauge("gatherer_markets", "Markets in the registry", g, registry=r)
        self.rest_errors = Counter(
            "gatherer_rest_errors", "REST request failures", [*g, "endpoint"], registry=r
        )
        self.health_status = Gauge(
            "gatherer_health_status", "2 healthy, 1 degraded, 0 unhealthy", g, registry=r
        )
        self.subunit_prices = Counter(
            "gatherer_subunit_prices",
            "Frames dead-lettered for a price finer than 1/10,000 $ (never rounded)",
            g,
            registry=r,
        )
        for m in (
            self.subunit_prices,
            self.gaps,
            self.resyncs,
            self.reconnects,
            self.spool_bytes,
            self.spool_max_bytes,
            self.spool_full,
            self.spool_full_episodes,
            self.write_seconds,
            self.ws_up,
            self.ws_configured,
            self.last_message_age,
            self.db_up,
            self.markets,
            self.health_status,
        ):
            m.labels(self.gatherer_id)
        # Labelled counters start at 0 for every known label value, so that increase() sees
        # the first event (a series born at 1 has no increase).
        for source in ("ws", "rest", "writer"):
            self.dead_letters.labels(self.gatherer_id, source)
