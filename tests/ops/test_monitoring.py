"""Prometheus rules and Grafana dashboards: promtool-checked, tested, and using known metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.tools import REPO, require_tool, run

MON = REPO / "monitoring"
PROM = MON / "prometheus"
DASHBOARDS = [MON / "grafana" / "gatherer.json", MON / "grafana" / "deduplicator.json"]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Names Prometheus itself provides to PromQL.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
METRIC_TOKEN = re.compile(r"\b(?:gatherer|dedup|export|audit)_[a-z0-9_]+\b")
SEVERITIES = {"info", "warning", "critical"}


def known_metrics() -> dict[str, str]:
    """Exposed sample name -> type, from monitoring/metrics.txt (histograms expanded)."""
    names: dict[str, str] = {}
    for raw in (MON / "metrics.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, kind, _labels = line.split()
        if kind == "histogram":
            names.update({name + s: kind for s in HISTOGRAM_SUFFIXES})
        else:
            names[name] = kind
    return names


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(dashboard file, PromQL) for every target of every panel and variable query."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        out += [(path.name, t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                out.append((path.name, var["definition"]))
    return out


def metric_tokens(expr: str) -> set[str]:
    """Metric-like names an expression uses (label names never contain the prefixes' '_')."""
    return set(METRIC_TOKEN.findall(expr))


def test_promtool_check_rules() -> None:
    """promtool accepts alerts.yml."""
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", str(PROM / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every promtool test case in alerts_test.yml passes."""
    promtool = require_tool("promtool")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation in the rule tests is reported as a failure (the check has teeth)."""
    promtool = require_tool("promtool")
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    text = (PROM / "alerts_test.yml").read_text()
    broken = text.replace("2 of 3 gatherers healthy", "3 of 3 gatherers healthy", 1)
    assert broken != text
    doc = yaml.safe_load(broken)
    doc["tests"] = [t for t in doc["tests"] if "3 of 3 gatherers healthy" in yaml.safe_dump(t)]
    assert len(doc["tests"]) == 1
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(doc))
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0
    assert "KalshiGatherersDegraded" in result.stdout + result.stderr


def test_promtool_check_scrape_config(tmp_path: Path) -> None:
    """The Prometheus configuration (scrape.yml + its rule file) is valid.

    It names no region: Prometheus on EC2 takes its own instance's region from the metadata
    service, which this machine has not, so the check runs on a copy with a region filled in.
    """
    promtool = require_tool("promtool")
    text = (PROM / "scrape.yml").read_text()
    doc = yaml.safe_load(text)
    jobs = doc["scrape_configs"]
    names = [j["job_name"] for j in jobs]
    assert names == ["kalshi-gatherer", "kalshi-dedup", "node"], names  # no self-scrape
    for job in jobs:
        for sd in job["ec2_sd_configs"]:
            assert "region" not in sd, job["job_name"]
            sd["region"] = "eu-west-3"
    (tmp_path / "scrape.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    result = run([promtool, "check", "config", "scrape.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    roles = [r for r in jobs[2]["relabel_configs"] if r.get("target_label") == "role"]
    assert roles, "the node job must carry the kalshi-data-role tag as `role` (disk alert)"


def test_every_alert_has_a_firing_test_case() -> None:
    """Each alert of alerts.yml is expected to fire in at least one promtool test case."""
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {
        check["alertname"]
        for case in tests
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), f"alerts without a firing test: {sorted(names - fired)}"
    assert fired - names == set(), f"tests of unknown alerts: {sorted(fired - names)}"


def test_seed_thresholds_are_encoded() -> None:
    """The catalogue's thresholds are in the rules: < 3 / == 0 gatherers, 30 s / 300 s lag."""
    by_name = {r["alert"]: r for r in alert_rules()}
    assert by_name["KalshiGatherersDegraded"]["expr"].endswith("< 3")
    assert by_name["KalshiGatherersDegraded"]["labels"]["severity"] == "warning"
    assert by_name["KalshiNoHealthyGatherer"]["expr"].endswith("== 0")
    assert by_name["KalshiNoHealthyGatherer"]["labels"]["severity"] == "critical"
    assert by_name["KalshiDedupSyncLagHigh"]["expr"].strip().endswith("> 30")
    assert by_name["KalshiProductionStale"]["expr"].strip().endswith("> 300")
    assert by_name["KalshiProductionStale"]["labels"]["severity"] == "critical"


def test_alerts_are_labelled_and_have_runbooks() -> None:
    """Each alert has a known severity, a summary and a runbook anchor that exists in the docs."""
    docs = (REPO / "docs" / "operations.md").read_text()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", url
        assert f'<a id="{anchor}"></a>' in docs, f"{rule['alert']}: no anchor {anchor}"


def test_rules_use_only_known_metrics() -> None:
    """Every metric name in an alert expression is listed in monitoring/metrics.txt."""
    known = known_metrics()
    for rule in alert_rules():
        unknown = metric_tokens(rule["expr"]) - known.keys() - BUILTIN_SERIES
        assert not unknown, f"{rule['alert']} uses unlisted metrics {sorted(unknown)}"


def test_dashboards_use_only_known_metrics() -> None:
    """Every metric name in a dashboard query is listed in monitoring/metrics.txt."""
    known = known_metrics()
    for name, expr in dashboard_exprs():
        unknown = metric_tokens(expr) - known.keys() - BUILTIN_SERIES
        assert not unknown, f"{name}: {expr!r} uses unlisted metrics {sorted(unknown)}"


def test_metric_name_check_catches_a_typo() -> None:
    """The name check is not vacuous: a misspelt metric is reported as unknown."""
    assert metric_tokens("rate(gatherer_mesages_total[5m])") - known_metrics().keys()


def test_every_listed_metric_is_on_a_dashboard() -> None:
    """Each metric of metrics.txt is shown by some dashboard panel (nothing exported unseen)."""
    used: set[str] = set()
    for _, expr in dashboard_exprs():
        used |= metric_tokens(expr)
    known = known_metrics()
    families = {n for n, kind in known.items() if kind != "histogram"}
    families |= {n + "_bucket" for n, kind in known.items() if kind == "histogram"} & known.keys()
    missing = {n for n in families if n not in used}
    assert not missing, f"metrics on no dashboard: {sorted(missing)}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana variables replaced by concrete values)."""
    promtool = require_tool("promtool")
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue
        concrete = expr.replace("$__rate_interval", "5m").replace("$gatherer", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    assert rules
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    """Dashboards import cleanly: a uid, a Prometheus datasource variable, distinct panel ids."""
    dash = json.loads(path.read_text())
    assert dash["uid"]
    assert dash["title"].startswith("kalshi-data")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_uids_are_distinct() -> None:
    """The two dashboards can be provisioned side by side."""
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def _overlaps(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of panels whose grid rectangles intersect."""
    out = []
    boxes = [(p["title"], p["gridPos"]) for p in panels]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            if (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            ):
                out.append((ta, tb))
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_do_not_overlap(path: Path) -> None:
    """No two panels share grid cells, and every panel fits the 24-column grid."""
    panels = json.loads(path.read_text())["panels"]
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    assert _overlaps(panels) == []


def test_overlap_check_can_fail() -> None:
    """The overlap check reports two panels on the same cells."""
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 6, "y": 4, "w": 12, "h": 8}}
    assert _overlaps([a, b]) == [("a", "b")]
