"""`millrace audit` against the real broker, a real job run and its SQLite store: every record accounted for
with exact counts; then a deleted stored row is named missing and a second row for one offset duplicated."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from millrace.config import Settings
from millrace.stores.sqlite import SqliteStore
from tests.integration.test_process import Expected, env_of, job_settings, produce, simulate

pytestmark = pytest.mark.integration


@pytest.fixture
def job(settings: Settings, tmp_path: Path) -> Settings:
    return job_settings(settings, tmp_path)


def key_of(data: dict[str, Any]) -> tuple[str, int]:
    return data["sensor_id"], int(pd.Timestamp(data["timestamp"]).value // 1_000_000)


def audit(s: Settings) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "millrace.cli.main", "audit", "--json", "--max-listed", "5"]
    done = subprocess.run(argv, env=env_of(s), capture_output=True, timeout=180, check=False)
    assert done.returncode in (0, 1), done.stderr.decode()[-2000:]
    return done.returncode, orjson.loads(done.stdout)


def test_audit_accounts_for_every_record_and_finds_a_lost_and_a_duplicated_one(job: Settings) -> None:
    from millrace.jobs.iot_stream import default_options, run

    messages = simulate(3, 240, seed=21)
    kinds = Counter(m.kind for m in messages)
    assert kinds["fault:duplicate"] and kinds["fault:malformed"] and kinds["fault:late"], kinds
    produce(job, messages)
    expected = Expected(messages, job.processing.allowed_lateness_s)
    run(job, default_options(job), until_idle_s=6.0, duration_s=240)

    code, report = audit(job)
    assert code == 0 and report["ok"], report
    assert report["totals"] == {
        "produced": len(messages),
        "stored": len(expected.stored),
        "dead_lettered": expected.dead + expected.late,
        "deduplicated": expected.duplicates,
        "missing": 0,
        "duplicated": 0,
        "outside": 0,
    }
    for p in report["partitions"]:
        assert p["produced"] == p["stored"] + p["dead_lettered"] + p["deduplicated"]

    # A stored reading whose key no other record repeats: deleting it loses exactly its offset.
    keys: Counter[tuple[str, int]] = Counter()
    for m in messages:
        try:
            keys[key_of(orjson.loads(m.value))] += 1
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a malformed record: no key
    store = SqliteStore(job.sqlite_path)
    try:
        rows = store.readings(sorted({r["sensor_id"] for r in store.latest_readings()})[0], limit=10**6)
        measured = [r for r in rows if r["kafka_offset"] is not None]
        single = [r for r in measured if keys[key_of(r)] == 1]
        lost, copied = single[len(single) // 2], single[len(single) // 3]
    finally:
        store.close()
    with sqlite3.connect(job.sqlite_path) as conn:
        deleted = conn.execute("DELETE FROM sensor_metrics WHERE sensor_id = ? AND timestamp = ?", key_of(lost))
        assert deleted.rowcount == 1

    code, report = audit(job)
    assert code == 1 and not report["ok"]
    assert (report["totals"]["missing"], report["totals"]["duplicated"]) == (1, 0)
    hit = next(p for p in report["partitions"] if p["missing"])
    assert (hit["partition"], hit["first_missing"]) == (lost["kafka_partition"], [lost["kafka_offset"]])

    # A second row claiming an already stored offset (the same reading under a shifted timestamp).
    store = SqliteStore(job.sqlite_path)
    try:
        shifted = {**copied, "timestamp": copied["timestamp"] + pd.Timedelta(milliseconds=1)}
        store.upsert_readings(pd.DataFrame([shifted]))
    finally:
        store.close()
    code, report = audit(job)
    assert code == 1 and (report["totals"]["missing"], report["totals"]["duplicated"]) == (1, 1)
    dup = next(p for p in report["partitions"] if p["duplicated"])
    assert (dup["partition"], dup["first_duplicated"]) == (copied["kafka_partition"], [copied["kafka_offset"]])
    assert report["totals"]["stored"] == len(expected.stored) - 1
