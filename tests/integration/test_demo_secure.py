"""`millrace demo --secure`, bounded: it starts the secured three-broker cluster (TLS, SASL/SCRAM, ACLs), runs the
simulator, the Spark job and the API each as its own principal (the API's cluster view works as ``api``), stores
readings, and its summary's audit accounts for every record; at the end everything it started, the brokers
included, is stopped.

The demo makes its own cluster in its own state dir (the path a user takes), so this test does not use the
session's secured cluster of fixtures_secure.py."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from millrace.runtime.process import ProcessManager, free_port
from millrace.runtime.security import load_security
from millrace.stores.sqlite import SqliteStore
from tests.helpers import wait_for
from tests.integration.fixtures_secure import STEP, free_bases

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

DEVICES, BACKFILL = 5, 120
PRINCIPALS = {"iot-simulate": "ingest", "iot-process": "stream-job", "api": "api"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _get(url: str, path: str, token: str) -> Any:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (the demo's loopback URL)
        return json.load(response)


def test_demo_secure_runs_each_process_as_its_principal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    client, controller = free_bases()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(
        {
            "MILLRACE_RUNTIME__KAFKA_PORT": str(client),
            "MILLRACE_RUNTIME__CONTROLLER_PORT": str(controller),
            "MILLRACE_RUNTIME__PORT_STEP": str(STEP),
            "MILLRACE_RUNTIME__KAFKA_HEAP": "512m",
            "MILLRACE_RUNTIME__START_TIMEOUT_S": "180",
            "MILLRACE_API__PORT": str(free_port()),
            "COLUMNS": "160",
        }
    )
    argv = [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(state), "demo", "--secure"]
    argv += ["--duration", "30", "--devices", str(DEVICES), "--backfill", str(BACKFILL)]
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=stdout, stderr=stderr)
    try:
        manager = ProcessManager(state)

        def pipeline_running() -> bool:
            assert demo.poll() is None, out.read_text(errors="replace")[-3000:] + err.read_text(errors="replace")
            return all(manager.running(name) is not None for name in PRINCIPALS)

        wait_for(pipeline_running, timeout_s=600, interval_s=0.5, what="the demo's three processes")
        # Each process got its own principal's settings through its environment, none through its command line.
        security = load_security(state)
        assert security is not None
        for name, principal in PRINCIPALS.items():
            rec = manager.running(name)
            assert rec is not None
            child = _environ(rec.pid)
            assert child["MILLRACE_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
            assert child["MILLRACE_KAFKA__SASL_USERNAME"] == principal, name
            assert child["MILLRACE_KAFKA__SASL_PASSWORD"] == security.password(principal)
            cmdline = Path(f"/proc/{rec.pid}/cmdline").read_bytes().decode(errors="replace")
            assert security.password(principal) not in cmdline
        # The API, as the api principal, serves the cluster view of the secured cluster.
        found = wait_for(
            lambda: re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/#token=([\w-]+)", out.read_text(errors="replace")),
            timeout_s=60,
            what="the dashboard URL with its token",
        )
        url, token = found.group(1), found.group(2)
        assert len(_get(url, "/api/kafka/brokers", token)["brokers"]) == 3
        readings = next(
            t for t in _get(url, "/api/kafka/topics", token)["topics"] if t["name"] == "millrace.iot.readings"
        )
        assert readings["replication_factor"] == 3 and readings["messages"] > 0
        wait_for(
            lambda: "millrace-iot-process" in {g["group_id"] for g in _get(url, "/api/kafka/groups", token)["groups"]},
            timeout_s=120,
            interval_s=2,
            what="the stream job's consumer group in the cluster view",
        )
        brokers = [rec for rec in manager.records() if rec.kind == "kafka"]
        assert sorted(rec.name for rec in brokers) == ["kafka-1", "kafka-2", "kafka-3"]
        assert all("sasl_ssl" in rec.ports for rec in brokers)  # the secured client listener
        code = demo.wait(900)
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(300)
    stdout_text, stderr_text = out.read_text(errors="replace"), err.read_text(errors="replace")
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (state / "logs").glob("*.log"))
    assert code == 0, f"{stdout_text[-3000:]}\n{stderr_text[-3000:]}\n{logs}"
    assert (
        "secured cluster (3 brokers, SASL_SSL): the simulator runs as ingest, the Spark job as stream-job, "
        "the API as api" in stdout_text
    )
    for principal in PRINCIPALS.values():
        assert security.password(principal) not in stdout_text + stderr_text + logs
    assert ProcessManager(state).records() == []  # everything it started was stopped, the brokers too
    store = SqliteStore(state / "millrace.db")
    try:
        stored = store.count("sensor_metrics")
        assert stored >= DEVICES * 6 * BACKFILL  # at least the history
        assert f"{stored:,}" in stdout_text
    finally:
        store.close()
    with sqlite3.connect(state / "millrace.db") as conn:
        measured = conn.execute("SELECT count(*) FROM sensor_metrics WHERE kafka_offset IS NOT NULL").fetchone()[0]
    totals = re.search(
        r"audit totals: produced (\d+), stored (\d+), dead-lettered (\d+), deduplicated (\d+), missing (\d+), "
        r"duplicated (\d+)",
        stdout_text,
    )
    assert totals is not None, stdout_text[-3000:]
    produced, audited, dead, dedup, missing, duplicated = map(int, totals.groups())
    assert (missing, duplicated) == (0, 0) and audited == measured
    assert produced == audited + dead + dedup and produced > 0
    assert f"ok: all {produced} records of millrace.iot.readings accounted for" in stdout_text
