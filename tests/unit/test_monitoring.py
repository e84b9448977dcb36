"""Monitoring config generation, checked by the real promtool and amtool (Debian prometheus and
prometheus-alertmanager: missing tools fail these tests, they never skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from millrace.config import MonitoringSettings, Settings
from millrace.errors import MillraceError
from millrace.runtime import kafka, monitoring
from millrace.runtime.host_exporter import HostCollector
from millrace.runtime.process import ProcessRecord
from millrace.runtime.tools import require

DATA = Path(__file__).parent / "data"
RULES_TEST = DATA / "alerts_test.yml"


def _settings(tmp_path: Path, **monitoring_fields: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", monitoring=MonitoringSettings(**monitoring_fields))  # type: ignore[arg-type]


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, timeout=60)


def _alertnames(rules_text: str) -> list[str]:
    groups = yaml.safe_load(rules_text)["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def test_duration_uses_the_largest_whole_unit() -> None:
    assert [monitoring.duration(s) for s in (3600, 300, 90, 30, 1, 1.5, 0.25, 0)] == [
        "1h",
        "5m",
        "90s",
        "30s",
        "1s",
        "1500ms",
        "250ms",
        "0ms",
    ]


def test_rules_carry_the_thresholds_from_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, consumer_lag_max=1234, broker_down_for_s=1.5, dead_letter_rate_max=0.25)
    text = monitoring.render_rules(settings)
    assert "${" not in text
    rules = {r["alert"]: r for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    assert rules["ConsumerLagHigh"]["expr"] == "max by (topic) (millrace_stream_lag_records) > 1234"
    assert rules["KafkaBrokerDown"]["for"] == "1500ms"
    assert rules["DeadLetterRateHigh"]["expr"] == "sum(rate(millrace_dead_letters_total[5m])) > 0.25"
    assert 'topic="millrace.iot.readings"' in rules["PipelineStalled"]["expr"]
    assert all(r["labels"]["severity"] in ("critical", "warning") for r in rules.values())


def test_prometheus_config_discovers_targets_from_the_state_dir(tmp_path: Path) -> None:
    settings = _settings(tmp_path, scrape_interval_s=1, evaluation_interval_s=2, alertmanager_port=19095)
    files = monitoring.write_configs(settings)
    assert files.changed == ("prometheus", "alertmanager")
    assert monitoring.write_configs(settings).changed == ()  # the same settings: nothing to reload
    lag = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"consumer_lag_max": 5})})
    assert monitoring.write_configs(lag).changed == ("prometheus",)
    config = yaml.safe_load(files.prometheus.read_text(encoding="utf-8"))
    assert config["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "2s"}
    assert config["rule_files"] == [str(files.rules.resolve())]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19095"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert sorted(jobs) == ["alertmanager", "millrace", "millrace-host", "prometheus"]
    target_glob = str((tmp_path / "state" / "metrics" / "targets").resolve() / "*.json")
    assert jobs["millrace"]["file_sd_configs"][0]["files"] == [target_glob]
    assert (tmp_path / "state" / "metrics" / "targets").is_dir()


def test_alertmanager_routes_to_nothing_one_or_both_webhooks(tmp_path: Path) -> None:
    none = yaml.safe_load(monitoring.render_alertmanager_config(MonitoringSettings()))
    assert none["receivers"] == [{"name": "millrace"}]
    assert none["route"]["receiver"] == "millrace"
    assert none["route"]["group_wait"] == "30s" and none["route"]["group_interval"] == "5m"
    token = tmp_path / "token"
    both = yaml.safe_load(
        monitoring.render_alertmanager_config(
            MonitoringSettings(
                webhook_url="http://hooks.example/alert",
                api_alerts_url="http://127.0.0.1:8000/api/monitoring/alerts",
                api_token_file=token,
                group_wait_s=0,
                group_interval_s=1,
            )
        )
    )
    hooks = both["receivers"][0]["webhook_configs"]
    assert hooks == [
        {"url": "http://hooks.example/alert", "send_resolved": True},
        {
            "url": "http://127.0.0.1:8000/api/monitoring/alerts",
            "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(token.resolve())}},
        },
    ]
    assert both["route"]["group_wait"] == "0ms" and both["route"]["group_interval"] == "1s"


def _record(name: str, kind: str, ports: dict[str, int]) -> ProcessRecord:
    return ProcessRecord(name, kind, 1, ports, "127.0.0.1", [], 0.0, "")


def test_jmx_targets_name_the_job_by_kind_and_skip_servers_without_jmx() -> None:
    records = [
        _record("kafka-2", "kafka", {"client": 9102, "jmx": 9414}),
        _record("kafka-1", "kafka", {"client": 9092, "jmx": 9404}),
        _record("backup-kafka-1", "kafka", {"client": 19092, "jmx": 19404}),
        _record("mirrormaker", "mirror", {"jmx": 19405}),
        _record("kafka-3", "kafka", {"client": 9112}),  # started without the exporter
        _record("mqtt", "mqtt", {"mqtt": 1883}),
    ]
    assert monitoring.jmx_targets(records) == [
        {"targets": ["127.0.0.1:19404"], "labels": {"job": "kafka-backup", "instance": "backup-kafka-1"}},
        {"targets": ["127.0.0.1:9404"], "labels": {"job": "kafka", "instance": "kafka-1"}},
        {"targets": ["127.0.0.1:9414"], "labels": {"job": "kafka", "instance": "kafka-2"}},
        {"targets": ["127.0.0.1:19405"], "labels": {"job": "mirrormaker", "instance": "mirrormaker"}},
    ]


def test_broker_loads_the_jmx_agent_only_with_a_jmx_port(tmp_path: Path) -> None:
    jar = tmp_path / "agent.jar"
    with_port = kafka.KafkaNode(1, "127.0.0.1", 9092, 9097, tmp_path / "n1", jmx_port=9404)
    without = kafka.KafkaNode(2, "127.0.0.1", 9102, 9107, tmp_path / "n2")
    cluster = kafka.KafkaCluster(nodes=(with_port, without), lib_dir=tmp_path, jmx_agent=jar)
    spec = kafka.node_spec(cluster, with_port, start_timeout_s=1, stop_timeout_s=1)
    agents = [arg for arg in spec.argv if arg.startswith("-javaagent:")]
    assert len(agents) == 1 and agents[0].startswith(f"-javaagent:{jar}=127.0.0.1:9404:")
    assert agents[0].endswith("resources/monitoring/kafka-jmx.yaml") and Path(agents[0].rsplit(":", 1)[1]).is_file()
    assert spec.argv.index(agents[0]) < spec.argv.index(kafka.KAFKA_MAIN)
    assert spec.ports["jmx"] == 9404
    plain = kafka.node_spec(cluster, without, start_timeout_s=1, stop_timeout_s=1)
    assert not any(arg.startswith("-javaagent:") for arg in plain.argv) and "jmx" not in plain.ports


def test_specs_keep_alertmanager_off_its_default_ports(tmp_path: Path) -> None:
    settings = _settings(tmp_path, prometheus_port=19090, alertmanager_port=19095, exporter_port=19402)
    specs = monitoring.specs(settings)
    assert [s.name for s in specs] == ["alertmanager", "metrics-exporter", "prometheus"]
    am, exporter, prom = specs
    assert "--cluster.listen-address=" in am.argv and "--web.listen-address=127.0.0.1:19095" in am.argv
    assert am.ports == {"http": 19095} and exporter.ports == {"http": 19402} and prom.ports == {"http": 19090}
    assert "--web.listen-address=127.0.0.1:19090" in prom.argv
    assert "--disk" in exporter.argv and str((tmp_path / "state").resolve()) in exporter.argv
    # no managed brokers in this state dir: the JMX target file is written, empty
    assert (tmp_path / "state" / "metrics" / "targets" / "jmx.json").read_text(encoding="utf-8").strip() == "[]"


def test_generated_files_pass_promtool_and_amtool(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token\n", encoding="utf-8")
    settings = _settings(
        tmp_path, webhook_url="http://127.0.0.1:1/hook", api_alerts_url="http://127.0.0.1:8000/x", api_token_file=token
    )
    checks = monitoring.check(settings)
    assert [(c.what, c.ok) for c in checks] == [
        ("prometheus config", True),
        ("alert rules", True),
        ("alertmanager config", True),
    ], [c.output for c in checks]
    assert "SUCCESS: 15 rules found" in checks[1].output
    assert "secret-token" not in (tmp_path / "state" / "monitoring" / "alertmanager.yml").read_text(encoding="utf-8")


def test_check_reports_a_broken_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_url="not a url")
    checks = monitoring.check(settings)
    assert [(c.what, c.ok) for c in checks][2] == ("alertmanager config", False)
    with pytest.raises(MillraceError, match="alertmanager config"):
        monitoring.require_ok(checks)


def test_every_rule_fires_and_stays_quiet_in_promtool_unit_tests(tmp_path: Path) -> None:
    rules = monitoring.render_rules(Settings())
    (tmp_path / "alerts.yml").write_text(rules, encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / "alerts_test.yml")
    result = _run([require("promtool", "for the rule tests"), "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Each rule has a case where it fires (expected alerts) and one where it does not (none expected).
    cases = [
        t for test in yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"] for t in test["alert_rule_test"]
    ]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fired == quiet == set(_alertnames(rules))


def test_the_rule_tests_can_fail(tmp_path: Path) -> None:
    """The same cases against a rule with another threshold: promtool must report the difference."""
    rules = monitoring.render_rules(Settings(monitoring=MonitoringSettings(consumer_lag_max=300_000)))
    (tmp_path / "alerts.yml").write_text(rules, encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / "alerts_test.yml")
    result = _run([require("promtool", "for the rule tests"), "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode == 1
    assert "alertname: ConsumerLagHigh, time: 6m" in result.stdout + result.stderr


def test_jmx_rules_file_is_valid_yaml_with_the_broker_metrics() -> None:
    path = Path(kafka.jmx_agent_option(Path("x.jar"), "h", 1).rsplit(":", 1)[1])
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = " ".join(rule["name"] for rule in config["rules"])
    for needed in ("brokertopicmetrics_$1", "requestmetrics_requests", "replicamanager_$1", "kafkacontroller_$1"):
        assert needed in names
    assert config["lowercaseOutputName"] is True


def _cli(tmp_path: Path, *env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    environ = {**clean, "COLUMNS": "200", "MILLRACE_STATE_DIR": str(tmp_path / "state"), **dict(env)}
    argv = [sys.executable, "-m", "millrace.cli.main", "monitoring", "check"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=environ, cwd=tmp_path, timeout=60)


def test_cli_check_passes_and_names_what_fails(tmp_path: Path) -> None:
    ok = _cli(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[:3] == ["✓ prometheus config", "✓ alert rules", "✓ alertmanager config"]
    assert (tmp_path / "state" / "monitoring" / "rules" / "alerts.yml").is_file()
    bad = _cli(tmp_path, ("MILLRACE_MONITORING__WEBHOOK_URL", "hooks.example/no-scheme"))
    assert bad.returncode == 1
    assert "✗ alertmanager config" in bad.stdout and 'unsupported scheme "" for URL' in bad.stdout
    assert bad.stderr.strip().splitlines() == ["error: monitoring check failed: alertmanager config"]
    wrong = _cli(tmp_path, ("MILLRACE_MONITORING__EVALUATION_INTERVAL_S", "0"))
    assert wrong.returncode == 2
    assert "monitoring.evaluation_interval_s" in wrong.stderr and "Traceback" not in wrong.stderr


def test_host_exporter_reads_disk_and_certificate_expiry(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    openssl = require("openssl", "for the certificate test")
    made = _run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10", "-subj", "/CN=t"]
        + ["-keyout", str(key), "-out", str(cert)]
    )
    assert made.returncode == 0, made.stderr
    collector = HostCollector([tmp_path], {"api": cert, "gone": tmp_path / "missing.pem"})
    families = {f.name: f for f in collector.collect()}
    free = families["millrace_disk_free_bytes"].samples
    size = families["millrace_disk_size_bytes"].samples
    assert [s.labels for s in free] == [{"path": str(tmp_path)}] and 0 < free[0].value <= size[0].value
    expiry = families["millrace_certificate_expiry_timestamp_seconds"].samples
    assert [s.labels for s in expiry] == [{"name": "api", "path": str(cert)}]  # the unreadable one is left out
    assert abs(expiry[0].value - (time.time() + 10 * 86400)) < 120


def test_backup_nodes_serve_jmx_after_the_primary_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from millrace.runtime import cluster, mirror

    # No jar downloads here: the jar paths are only put on the command line.
    monkeypatch.setattr(cluster, "resolve_jars", lambda name, version, cache_dir: tmp_path / name)
    monkeypatch.setattr(kafka, "jmx_agent_jar", lambda cache_dir: tmp_path / "agent.jar")
    settings = Settings(
        state_dir=tmp_path / "state",
        runtime={"brokers": 3, "port_step": 10},  # type: ignore[arg-type]
        mirror={"brokers": 2},  # type: ignore[arg-type]
        monitoring=MonitoringSettings(jmx_port=9404),
    )
    primary = cluster.describe(settings.state_dir, tmp_path, settings.runtime, jmx_port=settings.monitoring.jmx_port)
    backup = mirror.backup_cluster(settings, broker_metrics=True)
    assert [n.jmx_port for n in primary.nodes] == [9404, 9414, 9424]
    assert [n.jmx_port for n in backup.nodes] == [9434, 9444]
    assert backup.jmx_agent == tmp_path / "agent.jar"
    assert [n.jmx_port for n in mirror.backup_cluster(settings).nodes] == [None, None]
