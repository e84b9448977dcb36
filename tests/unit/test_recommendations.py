"""Operator recommendations: the shipped table's coverage, lookup precedence, a user file over the shipped
table, bad files (one line naming the key, exit 2), and the sink's enrichment of the step's alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from millrace.errors import ConfigError
from millrace.jobs.sink import recommendation_message, with_recommendations
from millrace.processing.recommendations import (
    ANY,
    Recommendation,
    RecommendationTable,
    load_table,
    parse_table,
    shipped_table,
)
from millrace.records import ANOMALY_KINDS, SENSOR_TYPES

# Every kind the stream job can name: the simulator's ground-truth kinds, and what scoring adds.
JOB_KINDS = (*ANOMALY_KINDS, "out_of_range", "statistical", "model")


def test_the_shipped_table_covers_every_kind_and_simulator_sensor_type() -> None:
    table = shipped_table()
    for kind in JOB_KINDS:
        assert (kind, ANY) in table.entries, kind
        for sensor_type in SENSOR_TYPES:
            found = table.lookup(kind, [sensor_type])
            assert found.id == f"{kind}.{sensor_type}", (kind, sensor_type)
            assert len(found.action) > 40 and "\n" not in found.action
    assert len({table.entries[(k, t)] for k in JOB_KINDS for t in SENSOR_TYPES}) == len(JOB_KINDS) * 6
    assert table.lookup("spike", ["generic"]).id == "spike.any"  # a type without an entry: the kind's fallback
    assert table.lookup("a_kind_of_my_model", ["generic"]).id == "any.any"
    assert table.lookup("a_kind_of_my_model", ["pressure"]).id == "any.pressure"


def test_lookup_precedence_most_specific_first() -> None:
    table = RecommendationTable(
        {
            ("spike", "pressure"): "spike-pressure",
            ("spike", ANY): "spike-any",
            (ANY, "voltage"): "any-voltage",
            (ANY, ANY): "any-any",
        }
    )
    assert table.lookup("spike", ["pressure"]) == Recommendation("spike.pressure", "spike-pressure")
    assert table.lookup("spike", ["voltage"]) == Recommendation("spike.any", "spike-any")  # kind before type
    assert table.lookup("drift", ["voltage"]) == Recommendation("any.voltage", "any-voltage")
    assert table.lookup("drift", ["pressure"]) == Recommendation("any.any", "any-any")
    assert table.lookup(None, []) == Recommendation("any.any", "any-any")
    # Several types: the most specific entry for any of them, the sensors' order breaking ties.
    assert table.lookup("spike", ["voltage", "pressure"]).id == "spike.pressure"
    assert table.lookup("drift", ["pressure", "voltage"]).id == "any.voltage"
    both = RecommendationTable({("spike", "a"): "A", ("spike", "b"): "B", (ANY, ANY): "x"})
    assert both.lookup("spike", ["b", "a", "b"]).id == "spike.b"


def test_a_user_file_replaces_and_extends_the_shipped_entries(tmp_path: Path) -> None:
    user = tmp_path / "actions.toml"
    user.write_text(
        '[spike]\npressure = "Call the line supervisor (ext. 4410),\\n   then close valve V-12."\n'
        'generic = "Check the recorded channel."\n'
        '[cavitation]\nany = "Raise the suction pressure."\n',
        encoding="utf-8",
    )
    shipped = shipped_table()
    table = load_table(user)
    assert table.lookup("spike", ["pressure"]) == Recommendation(
        "spike.pressure", "Call the line supervisor (ext. 4410), then close valve V-12."
    )
    assert table.lookup("spike", ["generic"]).id == "spike.generic"
    assert table.lookup("cavitation", ["pressure"]) == Recommendation("cavitation.any", "Raise the suction pressure.")
    # Everything the user file does not name stays as shipped.
    assert table.lookup("spike", ["vibration"]) == shipped.lookup("spike", ["vibration"])
    assert len(table.entries) == len(shipped.entries) + 2
    assert load_table(None) == shipped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[spike]\npressure = 3\n", "spike.pressure must be a non-empty text (got 3)"),
        ('[spike]\npressure = "  "\n', "spike.pressure must be a non-empty text (got '  ')"),
        ('spike = "check it"\n', "spike must be a table of sensor type = action (got str 'check it')"),
        ("[spike]\n[spike.pressure]\naction = 'x'\n", "spike.pressure must be a non-empty text (got {'action': 'x'})"),
        ("[spike\npressure = 'x'\n", "Expected ']' at the end of a table declaration (at line 1, column 7)"),
        (f'[drift]\nany = "{"x" * 1001}"\n', "drift.any is 1001 characters long (at most 1000)"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_table(path)
    assert str(caught.value) == f"invalid recommendations file {path}: {message}"


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting processing.recommendations_file: file not found: "):
        load_table(tmp_path / "nope.toml")


def test_parse_table_keeps_text_on_one_line() -> None:
    assert parse_table({"a": {"b": " one\n two  three "}}, source="x") == {("a", "b"): "one two three"}


def test_the_sink_attaches_the_recommendation_by_the_sensors_types() -> None:
    table = shipped_table()
    alert: dict[str, Any] = {
        "alert_id": "al-1",
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-pressure", "dev-0001-voltage"],
        "kind": "spike",
        "severity": "critical",
        "status": "open",
        "location": "loc-01",
        "opened_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:05.000Z",
        "recommendation": None,
        "recommendation_id": None,
    }
    types = {"dev-0001-pressure": "pressure", "dev-0001-voltage": "voltage", "other": "vibration"}
    (out,) = with_recommendations(table, [alert], types)
    expected = table.entries[("spike", "pressure")]
    assert out == {**alert, "recommendation": expected, "recommendation_id": "spike.pressure"}
    assert recommendation_message(out) == {
        "alert_id": "al-1",
        "recommendation_id": "spike.pressure",
        "recommendation": expected,
        "kind": "spike",
        "severity": "critical",
        "status": "open",
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-pressure", "dev-0001-voltage"],
        "location": "loc-01",
        "opened_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:05.000Z",
    }
    # Sensors whose type is not known: the kind's general action.
    (unknown,) = with_recommendations(table, [{**alert, "kind": "drift"}], {})
    assert unknown["recommendation_id"] == "drift.any"


def test_the_step_hands_the_sink_the_type_of_every_sensor_of_its_alerts(tmp_path: Path) -> None:
    """An alert record names its sensors, not their types: the stateful step hands them over from its state,
    so even an alert of a sensor's first micro-batch gets its type's action."""
    from millrace.config import load_settings
    from tests.unit.test_transforms_stateful import FakeState, _chunks, _fleet, make_step, run, step_input

    step, sink = make_step(load_settings(state_dir=tmp_path))
    state = FakeState(now_ms=1_800_000_000_000)
    fleet = _fleet(devices=3, seconds=300, anomaly_rate=0.3)
    for i, chunk in enumerate(_chunks(fleet, 60)):
        state.now_ms += 60_000
        run(step, state, "b0", step_input(chunk, first_offset=i * 10_000))
    alerted = {s for kind, alerts in sink.writes if kind == "alerts" for a in alerts for s in a["sensor_ids"]}
    truth = dict(zip(fleet["sensor_id"], fleet["sensor_type"], strict=True))
    assert alerted, "the fleet raised no alert"
    assert sink.sensor_types == {s: truth[s] for s in alerted}


def test_the_job_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    """The driver's writer reads the table before anything starts: a bad file is a ConfigError (exit 2 in the
    CLI, one line) rather than a failure in a Spark worker."""
    from millrace.config import load_settings
    from millrace.jobs.iot_stream import default_options, make_writer

    bad = tmp_path / "bad.toml"
    bad.write_text("[spike]\npressure = 3\n", encoding="utf-8")
    settings = load_settings(state_dir=tmp_path, processing={"recommendations_file": bad})
    with pytest.raises(ConfigError) as caught:
        make_writer(settings, default_options(settings, checkpoint=tmp_path / "ck"))
    assert caught.value.exit_code == 2
    assert str(caught.value) == f"invalid recommendations file {bad}: spike.pressure must be a non-empty text (got 3)"
    assert not (tmp_path / "ck" / "windows.db").exists()  # refused before it opened anything
    assert not settings.sqlite_path.exists()


def test_an_older_sqlite_store_gets_the_recommendation_columns(tmp_path: Path) -> None:
    import sqlite3
    from datetime import UTC, datetime

    from millrace.stores.sqlite import SqliteStore

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # anomaly_alerts as files created before recommendations have it
        conn.execute(
            "CREATE TABLE anomaly_alerts (alert_id TEXT PRIMARY KEY, device_id TEXT, sensor_ids TEXT, kind TEXT, "
            "severity TEXT, score REAL, reason TEXT, location TEXT, opened_at INTEGER, updated_at INTEGER, "
            "closed_at INTEGER, status TEXT NOT NULL, readings INTEGER, top_features TEXT)"
        )
        conn.execute(
            "INSERT INTO anomaly_alerts VALUES ('al-0', 'd', '[]', 'spike', 'warning', 1.0, '', 'l', 0, 0, NULL, "
            "'open', 1, '[]')"
        )
    store = SqliteStore(path)
    try:
        old = store.alert("al-0")
        assert old is not None and (old["recommendation"], old["recommendation_id"]) == (None, None)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        store.upsert_alerts(
            [
                {
                    "alert_id": "al-1",
                    "kind": "drift",
                    "status": "open",
                    "opened_at": at,
                    "updated_at": at,
                    "recommendation": "recalibrate",
                    "recommendation_id": "drift.any",
                }
            ]
        )
        new = store.alert("al-1")
        assert new is not None and (new["recommendation"], new["recommendation_id"]) == ("recalibrate", "drift.any")
    finally:
        store.close()
    SqliteStore(path).close()  # opening it again adds nothing twice
