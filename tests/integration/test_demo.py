"""The README's main command, bounded: `millrace demo --duration N` exits 0 with readings and alerts stored, and
its summary shows the audit of the readings topic against the store: every record accounted for."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from millrace.runtime.process import ProcessManager, free_port
from millrace.stores.sqlite import SqliteStore

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(960)]


def test_demo_runs_the_pipeline_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(
        {
            "MILLRACE_RUNTIME__KAFKA_PORT": str(kafka_port := free_port()),
            "MILLRACE_RUNTIME__CONTROLLER_PORT": str(free_port()),
            "MILLRACE_RUNTIME__KAFKA_HEAP": "512m",
            "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "MILLRACE_API__PORT": str(free_port()),
            "COLUMNS": "160",
        }
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "millrace.cli.main",
            "--state-dir",
            str(state),
            "demo",
            "--duration",
            "45",
            "--devices",
            "10",
            "--backfill",
            "180",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
        check=False,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (state / "logs").glob("*.log"))
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{logs}"
    assert "dashboard: http://127.0.0.1:" in result.stdout
    assert ProcessManager(state).records() == []  # everything it started was stopped
    store = SqliteStore(state / "millrace.db")
    try:
        stored = store.count("sensor_metrics")
        assert stored >= 10 * 6 * 180  # at least the history: every reading of 60 sensors for 180 s
        assert store.count("anomaly_alerts") > 0
        assert store.count("windowed_metrics") > 0
        assert f"{stored:,}" in result.stdout  # the summary shows the true figure
    finally:
        store.close()
    # The audit in the summary: the job drained the topic before it stopped, so nothing is missing, and its
    # stored count is the store's measured readings (those with a Kafka position).
    with sqlite3.connect(state / "millrace.db") as conn:
        measured = conn.execute("SELECT count(*) FROM sensor_metrics WHERE kafka_offset IS NOT NULL").fetchone()[0]
    assert "audit of millrace.iot.readings" in result.stdout
    totals = re.search(
        r"audit totals: produced (\d+), stored (\d+), dead-lettered (\d+), deduplicated (\d+), missing (\d+), "
        r"duplicated (\d+)",
        result.stdout,
    )
    assert totals is not None, result.stdout[-3000:]
    produced, audited, dead, dedup, missing, duplicated = map(int, totals.groups())
    assert (missing, duplicated) == (0, 0) and audited == measured
    assert produced == audited + dead + dedup
    assert f"ok: all {produced} records of millrace.iot.readings accounted for" in result.stdout
