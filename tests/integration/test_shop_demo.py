"""`millrace shop demo --external` against the session's broker and registry: it publishes the catalog, filters
and indexes it, produces orders and client searches (framed with the registry's schema and validated, nothing
dead-lettered), and on SIGTERM stops cleanly (exit 143) with a summary whose figures match what the topics
hold."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from millrace.config import Settings
from millrace.errors import KafkaUnavailable
from millrace.kafka.reader import watermarks
from millrace.kafka.schema_registry import json_deserializer, registry_client, schema_id_of, subject_for
from millrace.shop.catalog import load_products, sample_catalog_path
from tests.helpers import wait_for
from tests.integration.fixtures_shop import read_topic, shop_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MILLRACE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "millrace")


def _records(settings: Settings, topic: str) -> int:
    return sum(high - low for low, high in watermarks(settings.kafka.client_config(), topic).values())


def _searches_so_far(settings: Settings) -> int:
    try:
        return _records(settings, settings.topics.shop_client_search)
    except KafkaUnavailable:  # a fresh topic's leader may not be known yet
        return 0


def test_shop_demo_searches_and_stops_cleanly_on_sigterm(shop_settings: Settings, tmp_path: Path) -> None:
    topics = shop_settings.topics
    env = shop_env(shop_settings, tmp_path)
    cmd = [MILLRACE, "shop", "demo", "--external", "--search-rate", "5", "--order-rate", "20"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # searches are recorded in client-search as they happen
        wait_for(lambda: _searches_so_far(shop_settings) >= 10, timeout_s=180, what="10 searches")
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert stopped_in < 60
    summary = out[out.index("shop demo: summary") :]
    n_searches = int(re.search(r"searches \(found something\)\s*│\s*(\d+)", summary).group(1))  # type: ignore[union-attr]
    messages = read_topic(shop_settings.kafka.client_config(), topics.shop_client_search)
    # the demo runs validated: every query framed with the registered client-query schema ...
    client = registry_client(shop_settings.shop.registry_url)
    query_schema_id = client.get_latest_version(subject_for(topics.shop_client_search)).schema_id
    assert {(m.value()[:1], schema_id_of(m.value())) for m in messages} == {(b"\x00", query_schema_id)}
    deserialize = json_deserializer(client)  # validates each against the schema its framing names
    queries = [deserialize(m.value(), topics.shop_client_search) for m in messages]
    assert len(queries) == n_searches >= 10  # every search recorded once, nothing recorded after the stop
    # ... and the validating filter and index service dead-lettered nothing
    assert re.search(r"dead-lettered\s*│\s*0\b", summary), summary
    assert _records(shop_settings, topics.shop_dead_letter) == 0
    assert {q["type"] for q in queries} == {"search"}
    found = int(re.search(r"searches \(found something\)\s*│\s*\d+ \((\d+)\)", summary).group(1))  # type: ignore[union-attr]
    assert found == sum(1 for q in queries if q["results"] > 0)
    # searches start once the catalog is indexed: every word taken as it is from a product's name finds it
    products = load_products(sample_catalog_path())
    words = {w.lower() for p in products for w in str(p["name"]).split()}
    exact = [q for q in queries if q["query"] in words]
    assert exact and [q["query"] for q in exact if q["results"] == 0] == []
    catalog = len(products)
    assert re.search(rf"catalog published\s*│\s*{catalog}\b", summary)
    assert re.search(rf"filtered \(passed / dropped\)\s*│\s*{catalog} / 0", summary)
    assert _records(shop_settings, topics.shop_orders) > 0
