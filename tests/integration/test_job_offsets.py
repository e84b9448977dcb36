"""The stream job's lag in the API's cluster view: the job mirrors its end offsets into the consumer group named
after it, so the group's lag is what the job has not processed yet — while Spark keeps resuming from its
checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from millrace.config import Settings
from millrace.iot.simulator import FleetConfig, Simulator
from millrace.services.app import create_app
from tests.integration.test_process import job, produce  # noqa: F401 - the fixture and the producer

pytestmark = pytest.mark.integration

MORE = 37  # readings produced after the job stopped: the lag it must show


def highs(client: TestClient, topic: str) -> dict[int, int]:
    body = client.get(f"/api/kafka/topics/{topic}").json()
    return {p["partition"]: p["high"] for p in body["partitions"]}


def group_of(client: TestClient, group: str, topic: str) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The group as the cluster view shows it, and its offsets on ``topic`` by partition."""
    response = client.get(f"/api/kafka/groups/{group}")
    assert response.status_code == 200, response.text
    body = response.json()
    return body, {o["partition"]: o for o in body["offsets"] if o["topic"] == topic}


def test_the_jobs_lag_shows_in_the_cluster_view(job: Settings, tmp_path: Path) -> None:  # noqa: F811
    from millrace.jobs.iot_stream import default_options, run

    group, topic = job.spark.consumer_group, job.topics.readings
    assert group == "millrace-iot-process"
    messages = list(Simulator(FleetConfig(devices=2, locations=1, seed=21), duration_s=60).messages())
    first, more = messages[:-MORE], messages[-MORE:]
    produce(job, first)
    assert run(job, default_options(job), until_idle_s=4.0, duration_s=180).input_rows == len(first)

    with TestClient(create_app(job, live=False)) as client:
        drained = highs(client, topic)
        assert sum(drained.values()) == len(first) and len(drained) == 3
        body, offsets = group_of(client, group, topic)
        # Committed = the topic's end offset on every partition: lag 0. The group has no members (the commits
        # come from no consumer: nothing joins, nothing rebalances).
        assert {p: (o["committed"], o["high"], o["lag"]) for p, o in offsets.items()} == {
            p: (high, high, 0) for p, high in drained.items()
        }
        assert body["members"] == [] and body["state"] == "EMPTY"

        produce(job, more)  # produced, not processed: exactly the lag
        grown = highs(client, topic)
        _, offsets = group_of(client, group, topic)
        assert {p: o["lag"] for p, o in offsets.items()} == {p: grown[p] - drained[p] for p in grown}
        assert sum(o["lag"] for o in offsets.values()) == MORE

        # The job resumes from its checkpoint (not from the group): exactly the new readings, and lag 0 again.
        assert run(job, default_options(job), until_idle_s=4.0, duration_s=180).input_rows == MORE
        _, offsets = group_of(client, group, topic)
        assert {p: (o["committed"], o["lag"]) for p, o in offsets.items()} == {p: (h, 0) for p, h in grown.items()}
