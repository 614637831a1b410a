"""Every metric that monitoring/metrics.txt promises (and rules and dashboards use) is exported
by the code, with the listed type and labels."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from deduplicator.metrics import DedupMetrics
from gatherer.metrics import GathererMetrics
from kalshi_data.tools.export import ExportResult, _write_textfile

LISTED = Path(__file__).resolve().parents[2] / "monitoring" / "metrics.txt"


def _listed() -> dict[str, tuple[str, set[str]]]:
    out = {}
    for line in LISTED.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        out[name] = (kind, set() if labels == "-" else set(labels.split(",")))
    return out


def _families(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """Family name (counters with _total) -> (type, label names), from the registry's metadata."""
    out: dict[str, tuple[str, set[str]]] = {}
    for fam in registry.collect():
        name = f"{fam.name}_total" if fam.type == "counter" else fam.name
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        out[name] = (fam.type, labels)
    return out


def test_gatherer_and_dedup_export_everything_listed(tmp_path: Path) -> None:
    """Each listed gatherer_*, dedup_* and export_* metric exists with its type and labels."""
    g = GathererMetrics("g1")
    d = DedupMetrics("dedup-a")
    # Touch labelled children so their label names appear in the exposition.
    g.messages.labels("g1", "trade").inc()
    g.rows_written.labels("g1", "trades").inc()
    g.dead_letters.labels("g1", "ws").inc()
    g.queue_depth.labels("g1", "trades").set(0)
    g.rest_errors.labels("g1", "/markets").inc()
    d.record_merge("g1", "trades", 3, 1)
    d.sync_lag.labels("g1", "trades").set(0)
    d.backlog.labels("g1", "trades").set(0)
    d.gatherer_up.labels("g1").set(1)
    d.production_errors.labels("OSError").inc()
    d.uncovered_gaps.labels("g1").set(0)
    d.breaker_state.labels("gatherer-g1").set(0)
    d.batch_seconds.observe(0.1)
    d.cursor_rescans.labels("g1", "trades").inc()
    d.seen_skipped.labels("g1", "trades").inc()
    d.direct_conflicts.labels("g1", "trades").inc()
    d.partition_default_rows.labels("trades").set(0)
    exported = {**_families(g.registry), **_families(d.registry)}
    textfile = tmp_path / "export.prom"
    _write_textfile(textfile, ExportResult(files=[], rows={"trades": 5}))
    for fam in text_string_to_metric_families(textfile.read_text()):
        labels = set().union(*(set(s.labels) for s in fam.samples))
        exported[fam.name if fam.type != "counter" else f"{fam.name}_total"] = (fam.type, labels)
    from kalshi_data.tools.audit import render_metrics

    audit_text = render_metrics(
        missing_live=0, backfilled=0, missing_after=0, pending=0, lag_s=0.0, run_ts=0.0
    )
    for fam in text_string_to_metric_families(audit_text):
        exported[fam.name if fam.type != "counter" else f"{fam.name}_total"] = (fam.type, set())
    listed = _listed()
    missing = sorted(set(listed) - set(exported))
    assert missing == [], f"listed in metrics.txt but not exported: {missing}"
    for name, (kind, labels) in listed.items():
        assert exported[name][0] == kind, name
        assert exported[name][1] == labels, name


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    """Label values -> value of every sample called ``name``."""
    return {
        tuple(s.labels.values()): s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == name
    }


def test_labelled_event_counters_start_at_zero() -> None:
    """dead_letters (per source) and cursor_rescans (per gatherer and table) are exposed at 0
    before their first event, so that increase() in the alert rules sees that first event."""
    from kalshi_data.tables import SYNCED_TABLES

    g = GathererMetrics("g1")
    dead = _samples(g.registry, "gatherer_dead_letters_total")
    assert dead == {("g1", "ws"): 0.0, ("g1", "rest"): 0.0, ("g1", "writer"): 0.0}
    d = DedupMetrics("dedup-a")
    tables = [t.name for t in SYNCED_TABLES]
    d.preinit(["g1", "g7"], tables)
    rescans = _samples(d.registry, "dedup_cursor_rescans_total")
    assert rescans == {(gid, t): 0.0 for gid in ("g1", "g7") for t in tables}


def test_dedup_service_preinitialises_its_gatherers() -> None:
    """The deduplicator pre-initialises cursor_rescans for the configured gatherer ids."""
    from deduplicator.config import DedupConfig
    from deduplicator.service import Deduplicator
    from kalshi_data.config import load_config

    raw = {
        "instance_id": "dedup-a",
        "production": {"dsn": "postgresql://u@127.0.0.1:1/p"},
        "gatherers": [
            {"id": "g4", "dsn": "postgresql://u@127.0.0.1:1/a"},
            {"id": "g9", "dsn": "postgresql://u@127.0.0.1:1/b"},
        ],
    }
    cfg = load_config(DedupConfig, None, env={}, data=raw)
    service = Deduplicator(cfg)
    gatherers = {k[0] for k in _samples(service.metrics.registry, "dedup_cursor_rescans_total")}
    assert gatherers == {"g4", "g9"}
