"""The Grafana provisioning shipped in resources/grafana (Grafana itself is not obtainable here): the
datasource and dashboard providers, the dashboard's structure (ids, grid, datasources, targets), every
metric it names (millrace's from docs/metrics.md and the host exporter, Kafka's from the JMX exporter rules),
and every query parsed by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(str(resources.files("millrace") / "resources" / "grafana"))
JMX_RULES = Path(str(resources.files("millrace") / "resources" / "monitoring" / "kafka-jmx.yaml"))
METRICS_DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
HOST_EXPORTER = Path(str(resources.files("millrace") / "runtime" / "host_exporter.py"))
DATASOURCE_UID = "millrace-prometheus"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series every Prometheus has: scrape health and its own alerts.
BUILTIN = {"up", "ALERTS"}


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "millrace.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in query_panels() for t in p["targets"]]


def contract_metrics() -> dict[str, str]:
    """millrace metric name → type, from the table in docs/metrics.md."""
    found = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `(millrace_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", line)
        if m:
            found[m[1]] = m[2]
    return found


def host_metrics() -> set[str]:
    """The gauges of millrace's host exporter (disk space, certificate expiry), from its source."""
    return set(re.findall(r'GaugeMetricFamily\(\s*"(millrace_[a-z0-9_]+)"', HOST_EXPORTER.read_text(encoding="utf-8")))


def jmx_metrics() -> set[str]:
    """The names the JMX exporter serves under kafka-jmx.yaml: each rule's name with its pattern's
    alternatives expanded, lower-cased (lowercaseOutputName), COUNTERs with the _total suffix that
    jmx_prometheus_javaagent 1.x appends."""
    config = yaml.safe_load(JMX_RULES.read_text(encoding="utf-8"))
    assert config["lowercaseOutputName"] is True
    names = set()
    for rule in config["rules"]:
        groups = re.findall(r"\(([^()]*)\)", rule["pattern"])
        variants = [rule["name"]]
        for i, group in enumerate(groups, start=1):
            if f"${i}" in rule["name"]:
                options = group.split("|")
                assert all(re.fullmatch(r"\w+", o) for o in options), f"${i} of {rule['name']} is not a word list"
                variants = [v.replace(f"${i}", o) for v in variants for o in options]
        suffix = "_total" if rule.get("type") == "COUNTER" else ""
        names.update(v.lower() + suffix for v in variants)
    return names


# A metric name in PromQL: an identifier not followed by "(" (a function) and not a label inside {...} or
# by/without (...) — those are removed first, with strings.
_STRINGS = re.compile(r'"[^"]*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTORS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"sum", "by", "and", "or", "unless", "offset", "bool", "le"}


def metric_names(expr: str) -> set[str]:
    text = _RANGES.sub("", _SELECTORS.sub("", _GROUPING.sub("", _STRINGS.sub('""', expr))))
    return {name for name in _IDENT.findall(text) if name not in _KEYWORDS}


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, topic) (rate(millrace_delivery_latency_seconds_bucket{topic!="x"}'
        "[$__rate_interval]))) / on () group_left () time() - max(up) unless sum(kafka_log_size_bytes offset 5m)"
    )
    assert metric_names(expr) == {"millrace_delivery_latency_seconds_bucket", "up", "kafka_log_size_bytes"}


def test_the_datasource_is_prometheus_with_the_dashboards_uid() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "millrace.yaml").read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert {k: source[k] for k in ("uid", "type", "access", "url")} == {
        "uid": DATASOURCE_UID,
        "type": "prometheus",
        "access": "proxy",
        "url": "http://127.0.0.1:9090",  # [monitoring] prometheus_port's default
    }


def test_the_dashboard_provider_loads_files() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "millrace.yaml").read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["folder"] == "millrace"


def test_the_dashboard_has_unique_ids_and_a_grid_without_overlaps() -> None:
    board = dashboard()
    assert board["uid"] == "millrace-overview" and board["title"] == "millrace"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"}
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles))
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == ["Pipeline", "Alerts", "API", "Kafka", "Host"]


def test_every_panel_has_the_datasource_and_targets_with_expr() -> None:
    panels = query_panels()
    assert len(panels) == 25
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "table"}, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"] == p["datasource"], p["title"]


def test_every_metric_exists_in_the_contract_or_the_jmx_rules() -> None:
    contract = contract_metrics()
    jmx = jmx_metrics()
    host = host_metrics()
    assert len(contract) >= 17  # the metrics contract's table was read
    assert host == {
        "millrace_disk_free_bytes",
        "millrace_disk_size_bytes",
        "millrace_certificate_expiry_timestamp_seconds",
    }
    assert "kafka_server_brokertopicmetrics_messagesin_total" in jmx
    used: set[str] = set()
    for expr in exprs():
        used |= metric_names(expr)
    for name in sorted(used):
        if name in BUILTIN or name in jmx or name in host:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if base != name:
            assert contract.get(base) == "histogram", f"{name}: {base} is not a histogram of docs/metrics.md"
        else:
            assert name in contract, f"{name} is not in docs/metrics.md, the JMX rules or the host exporter"
            assert contract[name] != "histogram", f"{name} is a histogram: query its _bucket/_sum/_count"
    # the dashboard covers the whole contract
    covered = {next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in used}
    assert sorted(set(contract) - covered) == []


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus (scripts/setup.sh)"
    rules = [
        {"record": f"millrace:grafana_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(exprs())
    ]
    path = tmp_path / "grafana_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("panel_id", ["throughput", "lag", "batch_duration", "dead_letters", "brokers"])
def test_the_api_panels_draw_the_same_metrics_as_the_dashboard(panel_id: str) -> None:
    from millrace.services.monitoring import PANELS

    (panel,) = [p for p in PANELS if p.id == panel_id]
    grafana = set().union(*(metric_names(e) for e in exprs()))
    for series in panel.series:
        assert metric_names(series.expr) <= grafana, series.expr
