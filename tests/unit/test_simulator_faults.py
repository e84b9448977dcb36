"""Data faults injected into the simulator's message stream (no network)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson

from millrace.config import DEFAULT_RANGES
from millrace.iot.faults import MALFORMED_VARIANTS, classify_malformed
from millrace.iot.fleet import FleetConfig
from millrace.iot.simulator import Simulator
from millrace.records import parse_iso

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def _messages(**faults: float) -> list:
    cfg = FleetConfig(devices=3, locations=1, start=START, seed=3, anomaly_rate=0.0, **faults)  # type: ignore[arg-type]
    return list(Simulator(cfg, duration_s=1800).messages())


def test_no_faults_by_default() -> None:
    messages = _messages()
    assert {m.kind for m in messages} == {"normal"}
    assert len(messages) == 3 * 6 * 1800


def test_every_malformed_variant_is_produced() -> None:
    messages = _messages(malformed=0.01)
    bad = [m for m in messages if m.kind == "fault:malformed"]
    variants = Counter(classify_malformed(m.value) for m in bad)
    assert set(variants) == set(MALFORMED_VARIANTS)
    assert max(variants.values()) - min(variants.values()) <= 1  # cycled evenly
    assert all(classify_malformed(m.value) == "ok" for m in messages if m.kind != "fault:malformed")
    assert len(messages) == 3 * 6 * 1800  # replaced, not added


def test_impossible_values_are_outside_physical_ranges() -> None:
    messages = _messages(impossible=0.01)
    bad = [orjson.loads(m.value) for m in messages if m.kind == "fault:impossible"]
    assert len(bad) > 100
    for data in bad:
        rng = DEFAULT_RANGES[data["sensor_type"]]
        assert not rng.low <= data["value"] <= rng.high


def test_future_timestamps_are_ahead_of_the_wall_clock() -> None:
    before = datetime.now(UTC)
    messages = _messages(future=0.01)
    bad = [orjson.loads(m.value) for m in messages if m.kind == "fault:future"]
    assert len(bad) > 100
    assert all(parse_iso(d["timestamp"]) > before + timedelta(minutes=59) for d in bad)


def test_duplicates_repeat_an_earlier_message_exactly() -> None:
    messages = _messages(duplicate=0.01)
    originals = [m for m in messages if m.kind != "fault:duplicate"]
    copies = [m for m in messages if m.kind == "fault:duplicate"]
    assert len(originals) == 3 * 6 * 1800 and len(copies) > 100
    seen: set[bytes] = set()
    for msg in messages:
        if msg.kind == "fault:duplicate":
            assert msg.value in seen
        seen.add(msg.value)


def test_out_of_order_and_late_readings_arrive_behind_newer_ones() -> None:
    messages = _messages(out_of_order=0.005, late=0.005)
    assert len(messages) == 3 * 6 * 1800  # moved, not lost
    newest: dict[str, datetime] = {}
    behind: dict[str, list[float]] = {"fault:out_of_order": [], "fault:late": []}
    # Held-back readings are all released when the run ends: only those held back less than the longest
    # delay before the end show their full lateness.
    settled = START + timedelta(seconds=1800 - 600)
    for msg in messages:
        ts = parse_iso(orjson.loads(msg.value)["timestamp"])
        if msg.kind in behind:
            if ts < settled:
                behind[msg.kind].append((newest[msg.key] - ts).total_seconds())
        else:
            assert msg.key not in newest or ts > newest[msg.key]
        newest[msg.key] = max(ts, newest.get(msg.key, ts))
    assert len(behind["fault:out_of_order"]) > 20 and len(behind["fault:late"]) > 20
    assert all(0 < lag < 60 for lag in behind["fault:out_of_order"])  # within the usual allowed lateness
    assert all(lag > 100 for lag in behind["fault:late"])  # well beyond it
