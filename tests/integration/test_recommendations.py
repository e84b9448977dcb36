"""Operator recommendations through the real job: alerts the stream job raises carry the recommended action for
their kind and sensor types — in the store, in the API and on the recommendations topic — from the shipped
table with a user file over it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from millrace.config import Settings
from millrace.iot.simulator import FleetConfig, Simulator
from millrace.kafka.reader import read_all
from millrace.processing.recommendations import load_table, shipped_table
from millrace.records import ANOMALY_KINDS, to_iso
from millrace.services.app import create_app
from millrace.stores.base import Store
from millrace.stores.factory import open_store
from tests.integration.test_process import job_settings, produce
from tests.integration.test_store import T0, backend, mongo_settings, store  # noqa: F401 - fixtures
from tests.integration.test_store import alert as make_alert

pytestmark = pytest.mark.integration

JOB_KINDS = (*ANOMALY_KINDS, "out_of_range", "statistical", "model", "any")


def shift(messages: list[Any], sensor_id: str, start: pd.Timestamp, seconds: int, by: float) -> list[Any]:
    """The messages with ``sensor_id``'s readings in [start, start + seconds) raised by ``by``."""
    out = []
    for m in messages:
        data = orjson.loads(m.value)
        ts = pd.Timestamp(data["timestamp"])
        if data["sensor_id"] == sensor_id and start <= ts < start + pd.Timedelta(seconds=seconds):
            data["value"] += by
            m = m._replace(value=orjson.dumps(data))
        out.append(m)
    return out


def iso(value: Any) -> str:
    return to_iso(value) if isinstance(value, datetime) else str(value)


def test_alerts_carry_the_recommendation_in_the_store_the_api_and_the_topic(settings: Settings, tmp_path: Path) -> None:
    from millrace.jobs.iot_stream import default_options, run

    # The user's file: its own action for current whatever the kind; the rest stays as shipped. (current sorts
    # first among the types, so it decides an episode that spread to other sensors of the device.)
    user = tmp_path / "actions.toml"
    user.write_text(
        "".join(f'[{kind}]\ncurrent = "Site rule {kind}: call the utilities desk, ext. 4410."\n' for kind in JOB_KINDS),
        encoding="utf-8",
    )
    job = job_settings(settings, tmp_path)
    job = job.model_copy(update={"processing": job.processing.model_copy(update={"recommendations_file": user})})
    table = load_table(user)

    messages = list(
        Simulator(FleetConfig(devices=2, locations=1, seed=41, anomaly_rate=0.0), duration_s=240).messages()
    )
    types = {d["sensor_id"]: d["sensor_type"] for d in map(orjson.loads, (m.value for m in messages))}
    first = min(pd.Timestamp(orjson.loads(m.value)["timestamp"]) for m in messages)
    current_at, voltage_at = first + pd.Timedelta(seconds=120), first + pd.Timedelta(seconds=170)
    # ~80 and ~75 standard deviations of the simulator's noise, inside the physical ranges (not dead letters).
    messages = shift(messages, "dev-0001-current", current_at, 5, 40.0)
    messages = shift(messages, "dev-0002-voltage", voltage_at, 5, 60.0)
    # Two runs: the first 90 s, then the rest (from the checkpoint): the types survive a restart in the state.
    second = first + pd.Timedelta(seconds=90)
    early = [m for m in messages if pd.Timestamp(orjson.loads(m.value)["timestamp"]) < second]
    produce(job, early)
    run(job, default_options(job), until_idle_s=6.0, duration_s=240)
    produce(job, [m for m in messages if pd.Timestamp(orjson.loads(m.value)["timestamp"]) >= second])
    run(job, default_options(job), until_idle_s=6.0, duration_s=240)

    db = open_store(job)
    try:
        alerts = db.alerts(limit=10**6)
    finally:
        db.close()
    assert alerts
    # Every alert, the first micro-batch's included: the action of the most specific entry for its kind and its
    # sensors' types (the step hands the sink the types from its state).
    for alert in alerts:
        found = table.lookup(alert["kind"], [types[s] for s in alert["sensor_ids"]])
        assert (alert["recommendation_id"], alert["recommendation"]) == (found.id, found.action), alert

    def covering(sensor_id: str, at: pd.Timestamp) -> dict[str, Any]:
        hits = [
            a
            for a in alerts
            if sensor_id in a["sensor_ids"] and at <= pd.Timestamp(a["opened_at"]) < at + pd.Timedelta(seconds=5)
        ]
        assert len(hits) == 1, [(a["device_id"], a["opened_at"], a["sensor_ids"], a["kind"]) for a in alerts]
        return hits[0]

    current = covering("dev-0001-current", current_at)
    assert current["sensor_ids"][0] == "dev-0001-current"
    kind = current["kind"]
    assert current["recommendation_id"] == f"{kind}.current"
    assert current["recommendation"] == f"Site rule {kind}: call the utilities desk, ext. 4410."
    voltage = covering("dev-0002-voltage", voltage_at)
    if "dev-0002-current" not in voltage["sensor_ids"]:  # otherwise the user's current entry decides it
        shipped = shipped_table().lookup(voltage["kind"], [types[s] for s in voltage["sensor_ids"]])
        assert (voltage["recommendation_id"], voltage["recommendation"]) == (shipped.id, shipped.action)
        assert not voltage["recommendation"].startswith("Site rule")

    # The API's alerts: the same recommendation for every alert.
    with TestClient(create_app(job, live=False)) as client:
        body = client.get("/api/alerts", params={"limit": 1000}).json()
        one = client.get(f"/api/alerts/{current['alert_id']}").json()
    assert {a["alert_id"]: (a["recommendation_id"], a["recommendation"]) for a in body["items"]} == {
        a["alert_id"]: (a["recommendation_id"], a["recommendation"]) for a in alerts
    }
    assert (one["recommendation_id"], one["recommendation"]) == (
        current["recommendation_id"],
        current["recommendation"],
    )

    # The recommendations topic: keyed by alert_id; each alert's last message is its stored state.
    last: dict[str, dict[str, Any]] = {}
    for msg in read_all(job.kafka.client_config(), job.topics.recommendations):
        data = orjson.loads(msg.value())
        assert msg.key() == data["alert_id"].encode()
        last[data["alert_id"]] = data
    assert set(last) == {a["alert_id"] for a in alerts}
    for alert in alerts:
        assert last[alert["alert_id"]] == {
            "alert_id": alert["alert_id"],
            "recommendation_id": alert["recommendation_id"],
            "recommendation": alert["recommendation"],
            "kind": alert["kind"],
            "severity": alert["severity"],
            "status": alert["status"],
            "device_id": alert["device_id"],
            "sensor_ids": alert["sensor_ids"],
            "location": alert["location"],
            "opened_at": iso(alert["opened_at"]),
            "updated_at": iso(alert["updated_at"]),
        }
    # The alerts topic carries the recommendation too.
    on_alerts = {
        orjson.loads(m.value())["alert_id"]: orjson.loads(m.value())
        for m in read_all(job.kafka.client_config(), job.topics.alerts)
    }
    assert on_alerts[current["alert_id"]]["recommendation"] == current["recommendation"]


def test_the_recommendation_is_stored_with_the_alert_on_both_backends(store: Store) -> None:  # noqa: F811
    """SQLite and MongoDB keep the two fields and replace them with the job's next update of the episode; an
    operator's acknowledgement keeps them."""
    action = shipped_table().entries[("drift", "temperature")]
    first = make_alert("al-r", kind="spike", recommendation="check the probe", recommendation_id="spike.any")
    assert store.upsert_alerts([first]) == 1
    got = store.alert("al-r")
    assert got is not None and (got["recommendation"], got["recommendation_id"]) == ("check the probe", "spike.any")
    later = make_alert("al-r", kind="drift", recommendation=action, recommendation_id="drift.temperature")
    store.upsert_alerts([later])
    store.set_alert_status("al-r", "acknowledged", by="operator")
    got = store.alert("al-r")
    assert got is not None and got["status"] == "acknowledged"
    assert (got["recommendation"], got["recommendation_id"]) == (action, "drift.temperature")
    assert [(a["alert_id"], a["recommendation_id"]) for a in store.alerts()] == [("al-r", "drift.temperature")]
    # An alert written without one (by an older job) reads back with None.
    store.upsert_alerts([make_alert("al-old", opened_at=T0 - timedelta(hours=1), updated_at=T0 - timedelta(hours=1))])
    old = store.alert("al-old")
    assert old is not None and (old["recommendation"], old["recommendation_id"]) == (None, None)
