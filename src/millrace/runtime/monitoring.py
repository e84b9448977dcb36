"""Prometheus and Alertmanager (the Debian packages) as managed servers: ``millrace stack up --with monitoring``.

Everything is generated under ``<state_dir>/monitoring/`` on every start, from the settings and the running
stack:

- ``prometheus.yml``: scrape and evaluation intervals, the alert rules, Alertmanager, and the targets. Every
  millrace process (and the Kafka brokers' JMX exporters) is found through file-based service discovery on
  ``<state_dir>/metrics/targets/*.json``, so Prometheus follows processes as they come and go; the job label
  comes from each target file (``millrace-<component>``, ``kafka``, ``kafka-backup``, ``mirrormaker``).
- ``rules/alerts.yml``: the alert rules (resources/monitoring/alerts.yml with the [monitoring] thresholds).
- ``alertmanager.yml``: one route to the user's webhook and to millrace's own alert list, when set.

Besides the two servers a small exporter of our own (runtime.host_exporter, job ``millrace-host``) reports
disk space and certificate expiry. Readiness is Prometheus' and Alertmanager's ``/-/ready``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from millrace.config import MonitoringSettings, Settings
from millrace.errors import MillraceError
from millrace.runtime.process import ProcessManager, ProcessRecord, ServerSpec
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

NAME = "monitoring"
PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
EXPORTER = "metrics-exporter"
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it alertmanager.
_ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
# Managed-process kinds whose "jmx" port is scraped, and the job each is scraped as. The mirror runtime records
# the backup cluster's nodes as kind "kafka" named backup-kafka-<id> (runtime.mirror), MirrorMaker 2 as "mirror".
JMX_JOBS = {"kafka": "kafka", "mirror": "mirrormaker"}
BACKUP_PREFIX = "backup-"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def monitoring_dir(state_dir: Path) -> Path:
    return state_dir / "monitoring"


def targets_dir(state_dir: Path) -> Path:
    """Where processes register for Prometheus' file-based discovery (see the metrics contract)."""
    return state_dir / "metrics" / "targets"


def duration(seconds: float) -> str:
    """A Prometheus/Alertmanager duration in its largest whole unit: "1h", "5m", "30s", "1500ms"."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _resource(name: str) -> str:
    return (resources.files("millrace") / "resources" / "monitoring" / name).read_text(encoding="utf-8")


def rule_values(settings: Settings) -> dict[str, str]:
    """The values substituted into the alert rules template."""
    m = settings.monitoring
    return {
        "broker_down_for": duration(m.broker_down_for_s),
        "partitions_for": duration(m.partitions_for_s),
        "rate_window": duration(m.rate_window_s),
        "baseline_window": duration(max(m.rate_window_s * 12, 3600.0)),
        "consumer_lag_max": str(m.consumer_lag_max),
        "consumer_lag_for": duration(m.consumer_lag_for_s),
        "stalled_after": duration(m.stalled_after_s),
        "readings_topic": settings.topics.readings,
        "dead_letter_rate_max": f"{m.dead_letter_rate_max:g}",
        "quality_ratio_max": f"{m.quality_ratio_max:g}",
        "anomaly_spike_factor": f"{m.anomaly_spike_factor:g}",
        "anomaly_rate_min": f"{m.anomaly_rate_min:g}",
        "disk_free_ratio_min": f"{m.disk_free_ratio_min:g}",
        "cert_expiry_days": f"{m.cert_expiry_days:g}",
        "cert_expiry_s": f"{m.cert_expiry_days * 86400:g}",
        "mirror_latency_max_s": f"{m.mirror_latency_max_s:g}",
        "mirror_latency_max": duration(m.mirror_latency_max_s),
    }


def render_rules(settings: Settings) -> str:
    """The alert rules file (pure; a placeholder without a value is a bug here, so it raises)."""
    values = rule_values(settings)

    def substitute(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return _PLACEHOLDER.sub(substitute, _resource("alerts.yml"))


def render_prometheus_config(settings: Settings, *, rules_file: Path) -> str:
    m = settings.monitoring
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": duration(m.scrape_interval_s),
            "scrape_timeout": duration(min(m.scrape_interval_s, 10.0)),
            "evaluation_interval": duration(m.evaluation_interval_s),
        },
        "rule_files": [str(rules_file.resolve())],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{m.host}:{m.alertmanager_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{m.host}:{m.prometheus_port}"]}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [f"{m.host}:{m.alertmanager_port}"]}]},
            {"job_name": "millrace-host", "static_configs": [{"targets": [f"{m.host}:{m.exporter_port}"]}]},
            {
                # The job label of each target comes from its file; this name is only the fallback.
                "job_name": "millrace",
                "file_sd_configs": [
                    {"files": [str(targets_dir(settings.state_dir).resolve() / "*.json")], "refresh_interval": "30s"}
                ],
            },
        ],
    }
    return "# written by millrace; regenerated on every start\n" + yaml.safe_dump(config, sort_keys=False)


def render_alertmanager_config(m: MonitoringSettings) -> str:
    webhooks: list[dict[str, Any]] = []
    if m.webhook_url:
        webhooks.append({"url": m.webhook_url, "send_resolved": True})
    if m.api_alerts_url:
        api: dict[str, Any] = {"url": m.api_alerts_url, "send_resolved": True}
        if m.api_token_file is not None:
            # Alertmanager reads the token from the file: it never appears in the generated config.
            api["http_config"] = {"authorization": {"credentials_file": str(m.api_token_file.resolve())}}
        webhooks.append(api)
    receiver: dict[str, Any] = {"name": "millrace"}
    if webhooks:
        receiver["webhook_configs"] = webhooks
    config = {
        "route": {
            "receiver": "millrace",
            "group_by": ["alertname", "job", "instance"],
            "group_wait": duration(m.group_wait_s),
            "group_interval": duration(m.group_interval_s),
            "repeat_interval": duration(m.repeat_interval_s),
        },
        "receivers": [receiver],
    }
    return "# written by millrace; regenerated on every start\n" + yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class Files:
    prometheus: Path
    rules: Path
    alertmanager: Path
    changed: tuple[str, ...] = ()  # which of them differ from what was there before ("prometheus", ...)


def write_configs(settings: Settings) -> Files:
    """Write the three generated files under ``<state_dir>/monitoring``."""
    home = monitoring_dir(settings.state_dir)
    prometheus, rules, alertmanager = home / "prometheus.yml", home / "rules" / "alerts.yml", home / "alertmanager.yml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    targets_dir(settings.state_dir).mkdir(parents=True, exist_ok=True)
    changed = []
    if _write(rules, render_rules(settings)) | _write(prometheus, render_prometheus_config(settings, rules_file=rules)):
        changed.append(PROMETHEUS)
    if _write(alertmanager, render_alertmanager_config(settings.monitoring)):
        changed.append(ALERTMANAGER)
    return Files(prometheus, rules, alertmanager, tuple(changed))


def _write(path: Path, text: str) -> bool:
    """Write ``text`` unless ``path`` holds it already; True when it changed."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    path.write_text(text, encoding="utf-8")
    return True


def jmx_targets(records: list[ProcessRecord]) -> list[dict[str, Any]]:
    """file_sd target groups for every managed JVM that serves a JMX exporter (a "jmx" port)."""
    groups = []
    for rec in sorted(records, key=lambda r: r.name):
        job = JMX_JOBS.get(rec.kind)
        if job == "kafka" and rec.name.startswith(BACKUP_PREFIX):
            job = "kafka-backup"
        if job is not None and "jmx" in rec.ports:
            groups.append({"targets": [f"{rec.host}:{rec.ports['jmx']}"], "labels": {"job": job, "instance": rec.name}})
    return groups


def write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    """Write a file_sd file atomically (Prometheus may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups, indent=2), encoding="utf-8")
    tmp.replace(path)


def register_jmx_targets(state_dir: Path) -> int:
    """(Re)write ``targets/jmx.json`` from the managed processes' records; returns how many targets.

    Called when monitoring starts; a runtime that starts JMX-exporting servers later (MirrorMaker, a backup
    cluster) calls it again so Prometheus picks them up without a restart.
    """
    groups = jmx_targets(ProcessManager(state_dir).records())
    write_targets(targets_dir(state_dir) / "jmx.json", groups)
    return len(groups)


def certificates(settings: Settings) -> dict[str, Path]:
    """The certificate files millrace uses, by name: the Kafka cluster's CA and nodes, the API's and MQTT's."""
    from millrace.runtime.security import security_dir

    found: dict[str, Path] = {}
    home = security_dir(settings.state_dir)
    if (home / "ca.pem").is_file():
        found["kafka-ca"] = home / "ca.pem"
    for node in sorted(home.glob("node-*.pem")):
        found[f"kafka-{node.stem}"] = node
    if settings.api.tls_cert is not None:
        found["api"] = settings.api.tls_cert
    if settings.runtime.mqtt_tls_certfile is not None:
        found["mqtt"] = settings.runtime.mqtt_tls_certfile
    return found


def alertmanager_binary() -> str:
    for name in _ALERTMANAGER_BINARIES:
        found = shutil.which(name)
        if found is not None:
            return found
    return require("prometheus-alertmanager", "to run Alertmanager (`stack up --with monitoring`)")


def reload_running(settings: Settings, names: tuple[str, ...]) -> list[str]:
    """Ask a Prometheus and Alertmanager (of ``names``) that already run to re-read their regenerated files:
    ``stack up`` keeps running servers, so without this a changed threshold or webhook would wait for a restart.
    Only changed files are reloaded: a reload drops Prometheus' Alertmanager list until its discovery refreshes
    it (up to ~5 s), and an alert that fires then waits for the next resend."""
    m = settings.monitoring
    manager = ProcessManager(settings.state_dir)
    reloaded = []
    for name, port in ((PROMETHEUS, m.prometheus_port), (ALERTMANAGER, m.alertmanager_port)):
        if name not in names or manager.running(name) is None:
            continue
        request = urllib.request.Request(f"http://{m.host}:{port}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http on localhost)
                if response.status == 200:
                    reloaded.append(name)
        except OSError as exc:
            log.warning("%s did not reload its config: %s", name, exc)
    return reloaded


def http_ready(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http on localhost)
            return bool(response.status == 200)
    except OSError:
        return False


def specs(settings: Settings) -> list[ServerSpec]:
    """Alertmanager, the host exporter and Prometheus (in that start order), configs written first."""
    m, rt = settings.monitoring, settings.runtime
    prometheus = require("prometheus", "to run Prometheus (`stack up --with monitoring`)")
    alertmanager = alertmanager_binary()
    files = write_configs(settings)
    reload_running(settings, files.changed)
    home = monitoring_dir(settings.state_dir)
    count = register_jmx_targets(settings.state_dir)
    if count == 0:
        log.warning(
            "no Kafka broker serves JMX metrics: brokers started before monitoring run without the exporter "
            "(restart them with `stack down` and `stack up --with monitoring`)"
        )
    am_url = f"http://{m.host}:{m.alertmanager_port}"
    exporter_argv = [sys.executable, "-m", "millrace.runtime.host_exporter", "--host", m.host]
    exporter_argv += ["--port", str(m.exporter_port), "--disk", str(settings.state_dir.resolve())]
    for cert_name, path in certificates(settings).items():
        exporter_argv += ["--cert", f"{cert_name}={path.resolve()}"]
    common = {"start_timeout_s": rt.start_timeout_s, "stop_timeout_s": rt.stop_timeout_s, "host": m.host}
    return [
        ServerSpec(
            name=ALERTMANAGER,
            kind="alertmanager",
            argv=[
                alertmanager,
                f"--config.file={files.alertmanager.resolve()}",
                f"--storage.path={(home / 'alertmanager-data').resolve()}",
                f"--web.listen-address={m.host}:{m.alertmanager_port}",
                "--cluster.listen-address=",  # one instance: no gossip port (its default 9094 is near Kafka's)
            ],
            ports={"http": m.alertmanager_port},
            ready=lambda: http_ready(f"{am_url}/-/ready"),
            **common,  # type: ignore[arg-type]
        ),
        ServerSpec(
            name=EXPORTER,
            kind="metrics-exporter",
            argv=exporter_argv,
            ports={"http": m.exporter_port},
            ready=lambda: http_ready(f"http://{m.host}:{m.exporter_port}/metrics"),
            **common,  # type: ignore[arg-type]
        ),
        ServerSpec(
            name=PROMETHEUS,
            kind="prometheus",
            argv=[
                prometheus,
                f"--config.file={files.prometheus.resolve()}",
                f"--storage.tsdb.path={(home / 'prometheus-data').resolve()}",
                f"--storage.tsdb.retention.time={m.retention}",
                f"--web.listen-address={m.host}:{m.prometheus_port}",
                "--web.enable-lifecycle",  # POST /-/reload after the config is regenerated
                # A firing alert Alertmanager did not get (not reachable, or not yet rediscovered after a
                # reload) is sent again after this; Prometheus' default is 1 min.
                f"--rules.alert.resend-delay={duration(min(60.0, m.evaluation_interval_s))}",
            ],
            ports={"http": m.prometheus_port},
            ready=lambda: http_ready(f"{m.prometheus_url}/-/ready"),
            **common,  # type: ignore[arg-type]
        ),
    ]


register_extra(NAME)(specs)


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    output: str


def check(settings: Settings) -> list[Check]:
    """Write the configs and check them with promtool and amtool (what ``millrace monitoring check`` runs)."""
    files = write_configs(settings)
    promtool = require("promtool", "to check the Prometheus config (Debian package prometheus)")
    amtool = require("amtool", "to check the Alertmanager config (Debian package prometheus-alertmanager)")
    runs = [
        ("prometheus config", [promtool, "check", "config", str(files.prometheus)]),
        ("alert rules", [promtool, "check", "rules", str(files.rules)]),
        ("alertmanager config", [amtool, "check-config", str(files.alertmanager)]),
    ]
    out = []
    for what, argv in runs:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        out.append(Check(what, result.returncode == 0, (result.stdout + result.stderr).strip()))
    return out


def require_ok(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise MillraceError(
            "; ".join(f"{c.what}: {c.output.splitlines()[-1] if c.output else 'failed'}" for c in failed)
        )
