"""The audit's reconciliation on hand-made inputs (no broker, no store), and its CLI's errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from millrace.iot.audit import dead_letter_positions, reading_key, recheck, reconcile, unaccounted
from tests.unit.test_cli import run


def test_every_offset_is_counted_once_first_match_wins() -> None:
    ranges = {0: (0, 10), 1: (5, 9)}
    stored = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 3), (1, 5), (1, 6), (1, 2)]  # (0,3) twice; (1,2) expired
    dead = [(0, 4), (0, 4), (0, 1), (1, 7)]  # a replayed dead letter; (0,1) is stored as well: stored wins
    dedup = [(0, 5), (1, 7)]  # (1,7) is dead-lettered: dead wins
    report = reconcile(ranges, stored, dead, dedup, topic="t", max_listed=3)
    p0, p1 = report.partitions
    assert (p0.produced, p0.stored, p0.dead_lettered, p0.deduplicated, p0.missing) == (10, 4, 1, 1, 4)
    assert p0.first_missing == (6, 7, 8) and p0.duplicated == 1 and p0.first_duplicated == (3,)
    assert (p1.produced, p1.stored, p1.dead_lettered, p1.deduplicated, p1.missing) == (4, 2, 1, 0, 1)
    assert p1.first_missing == (8,) and p1.duplicated == 0 and p1.outside == 1
    assert not report.ok
    assert report.to_dict()["totals"] == {
        "produced": 14,
        "stored": 6,
        "dead_lettered": 2,
        "deduplicated": 1,
        "missing": 5,
        "duplicated": 1,
        "outside": 1,
    }
    assert report.verdict() == "FAILED: 5 missing and 1 duplicated of 14 records of t"


def test_a_complete_audit_is_ok() -> None:
    report = reconcile({0: (0, 3), 1: (0, 0)}, [(0, 0), (0, 2)], [(0, 1)], topic="t")
    assert report.ok and report.total("missing") == 0 and report.partitions[1].produced == 0
    assert report.verdict() == "ok: all 3 records of t accounted for"


def test_a_duplicated_offset_alone_fails_the_audit() -> None:
    report = reconcile({0: (0, 2)}, [(0, 0), (0, 1), (0, 1)], [])
    assert not report.ok and report.total("missing") == 0 and report.partitions[0].first_duplicated == (1,)


def test_unaccounted_offsets_are_the_candidates_for_dedup_or_missing() -> None:
    got = unaccounted({0: (2, 8), 1: (0, 2)}, [(0, 2), (0, 5), (1, 0)], [(0, 3)])
    assert got == {0: [4, 6, 7], 1: [1]}


def test_dead_letters_of_the_readings_topic_only() -> None:
    def letter(source: str, position: str) -> bytes:
        return orjson.dumps({"reason": "late", "stage": "validation", "source": source, "position": position})

    payloads = [letter("readings", "0:5"), letter("readings", "2:17"), letter("plant.csv", "row 3"), b"{", None]
    assert dead_letter_positions(payloads, "readings") == {(0, 5), (2, 17)}


def test_reading_key_is_the_stores_key() -> None:
    raw = orjson.dumps({"sensor_id": "s-1", "timestamp": "2026-01-01T00:00:01.2345Z", "value": 1.0})
    assert reading_key(raw) == ("s-1", datetime(2026, 1, 1, 0, 0, 1, 234000, tzinfo=UTC))
    naive = orjson.dumps({"sensor_id": "s-1", "timestamp": "2026-01-01T00:00:01"})
    assert reading_key(naive) == ("s-1", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    for bad in (b"not json", b"{}", orjson.dumps({"sensor_id": 3, "timestamp": "2026-01-01"}), None):
        assert reading_key(bad) is None
    assert reading_key(orjson.dumps({"sensor_id": "s", "timestamp": "yesterday-ish"})) is None


def test_cli_bad_option_exits_2(tmp_path: Path) -> None:
    result = run("--state-dir", str(tmp_path), "audit", "--max-listed", "-1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_cli_unreachable_kafka_is_one_line_exit_1(tmp_path: Path) -> None:
    env = {"MILLRACE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = run("--state-dir", str(tmp_path), "audit", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "error:" in line]
    assert len(lines) == 1 and "Kafka" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_a_record_stored_after_the_positions_were_read_is_stored_not_deduplicated() -> None:
    """The audit reads the stored positions, then looks the unaccounted records up by key: a job still writing
    may have stored one meanwhile, under its own position (stored); a key held under another position is a
    repeat the job dropped (deduplicated); a key not held, or no key, stays unaccounted (missing)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    held = {("s-1", at): {(0, 5)}, ("s-2", at): {(1, 2)}}
    stored, dedup = recheck(
        [((0, 5), ("s-1", at)), ((1, 7), ("s-2", at)), ((2, 3), ("s-3", at)), ((2, 4), None)],
        lambda sensor_id, ts: held.get((sensor_id, ts), set()),
    )
    assert (stored, dedup) == ([(0, 5)], {(1, 7)})
    report = reconcile({0: (5, 6), 1: (7, 8), 2: (3, 5)}, stored, [], dedup)
    assert [(p.stored, p.deduplicated, p.missing) for p in report.partitions] == [(1, 0, 0), (0, 1, 0), (0, 0, 2)]
