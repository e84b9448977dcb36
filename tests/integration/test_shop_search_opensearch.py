"""The OpenSearch backend against a real node started through millrace.runtime (``stack up --with search``'s
ServerSpec, on free ports): the same search behaviour as the embedded tantivy backend, and an index service
writing to it. Java and Maven are needed; when they are missing the fixture fails, it does not skip."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from millrace.config import Settings
from millrace.runtime.process import ProcessManager
from millrace.runtime.search import NAME, search_spec
from millrace.shop.indexer import run_indexer
from millrace.shop.search import PriceRange, ProductDoc, QueryDoc, SearchRequest
from millrace.shop.search_opensearch import OpenSearchBackend
from tests.helpers import unique, wait_for
from tests.integration.test_shop_filter import (
    MILLRACE,
    ShopTopics,
    produce_items,
    shop_env,
    shop_topics,  # noqa: F401 - a fixture
)
from tests.integration.test_shop_search import CATALOG

pytestmark = pytest.mark.integration

PRODUCTS = [
    ProductDoc("p1", "Клавиатура YZA", "Механическая клавиатура с подсветкой", "Компьютеры", "YZA", 3500.0, "RUB"),
    ProductDoc("p2", "Умные часы Ёлка", "Часы с пульсометром", "Электроника", "Tick", 12000.0, "RUB"),
    ProductDoc("p3", "Ёлочная игрушка", "Стеклянный шар", "Дом", "Fest", 300.0, "RUB"),
    ProductDoc("p4", "Наручные часы", "Кварцевые часы", "Аксессуары", "Tick", 4500.0, "RUB"),
]


def free_port_below_9300() -> int:
    """The runner serves HTTP on no port above 9299."""
    for port in range(9200, 9300):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 9200-9299 for OpenSearch's HTTP")


@pytest.fixture(scope="module")
def opensearch(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The node's HTTP URL; its log and data in the fixture's state dir."""
    state_dir = tmp_path_factory.mktemp("opensearch")
    port = free_port_below_9300()
    shop = settings.shop.model_copy(update={"search_port": port, "opensearch_url": f"http://127.0.0.1:{port}"})
    node_settings = settings.model_copy(update={"shop": shop, "state_dir": state_dir})
    manager = ProcessManager(state_dir)
    manager.start(search_spec(node_settings))
    try:
        yield shop.opensearch_url
    finally:
        assert manager.stop(NAME, timeout_s=30), "OpenSearch did not stop"


@pytest.fixture
def backend(opensearch: str) -> OpenSearchBackend:
    backend = OpenSearchBackend(opensearch, prefix=unique("shop"))
    backend.upsert_products(PRODUCTS)
    backend.commit()
    return backend


def ids(backend: OpenSearchBackend, text: str, **filters: object) -> list[str]:
    return sorted(h.id for h in backend.search(SearchRequest(text, **filters)).hits)  # type: ignore[arg-type]


def test_russian_forms_typos_and_yo(backend: OpenSearchBackend) -> None:
    assert ids(backend, "клавиатуры") == ["p1"]
    assert ids(backend, "часов") == ["p2", "p4"]
    assert ids(backend, "умные часы") == ["p2"]
    assert ids(backend, "клавиатцра") == ["p1"]
    assert ids(backend, "клавиатцра", fuzzy=False) == []
    assert ids(backend, "елочная") == ids(backend, "ёлочная") == ["p3"]
    (hit,) = backend.search(SearchRequest("елка")).hits
    assert hit.name == "Умные часы Ёлка" and hit.highlight == "Умные часы <b>Ёлка</b>"


def test_facets_filters_and_idempotent_writes(backend: OpenSearchBackend) -> None:
    result = backend.search(SearchRequest("часы"))
    assert result.total == 2
    assert result.facets == {
        "category": {"Электроника": 1, "Аксессуары": 1},
        "brand": {"Tick": 2},
        "price": {"1000-5000": 1, "5000-20000": 1},
    }
    assert ids(backend, "", brand="Tick", price=PriceRange(5000, None)) == ["p2"]
    backend.upsert_products(PRODUCTS)  # a replay
    backend.upsert_products([ProductDoc("p1", "Клавиатура беспроводная", category="Компьютеры", price=4000.0)])
    backend.delete_products(["p3", "nope"])
    backend.commit()
    assert backend.search(SearchRequest("")).total == 3
    (hit,) = backend.search(SearchRequest("клавиатура")).hits
    assert (hit.name, hit.price) == ("Клавиатура беспроводная", 4000.0)
    docs = [QueryDoc("t/0/1", "search", "u1", "Умные часы", "t"), QueryDoc("t/0/2", "search", "u2", "умные часы ", "t")]
    backend.upsert_queries(docs)
    backend.upsert_queries(docs[:1])
    backend.commit()
    assert backend.count_queries() == 2 and backend.count_queries("умные часы") == 2


def test_two_writers_share_one_index(opensearch: str) -> None:
    prefix = unique("shop")
    first, second = OpenSearchBackend(opensearch, prefix=prefix), OpenSearchBackend(opensearch, prefix=prefix)
    first.upsert_products(PRODUCTS[:2])
    second.upsert_products(PRODUCTS[2:])
    first.commit()
    second.commit()
    assert ids(first, "") == ["p1", "p2", "p3", "p4"]


def test_index_service_and_search_command_on_opensearch(
    settings: Settings,
    shop_topics: ShopTopics,  # noqa: F811
    opensearch: str,
    tmp_path: Path,
) -> None:
    conf = settings.kafka.client_config()
    writer = OpenSearchBackend(opensearch)  # the default index names, which the command uses
    stop = threading.Event()
    thread = threading.Thread(
        target=run_indexer,
        args=(conf, writer),
        kwargs={
            "products_topic": shop_topics.filtered,
            "queries_topic": shop_topics.client_search,
            "group": unique("index"),
            "stop": stop,
        },
        daemon=True,
    )
    thread.start()
    try:
        produce_items(conf, shop_topics.filtered, [(k, v) for k, v in CATALOG] + [("wrist", None)])  # then deleted
        reader = OpenSearchBackend(opensearch)
        wait_for(lambda: reader.search(SearchRequest("")).total == 3, timeout_s=30, what="3 products in OpenSearch")
        assert sorted(h.id for h in reader.search(SearchRequest("часов")).hits) == ["watch"]
        env = shop_env(settings, shop_topics, tmp_path)
        env["MILLRACE_SHOP__SEARCH_BACKEND"] = "opensearch"
        env["MILLRACE_SHOP__OPENSEARCH_URL"] = opensearch
        done = subprocess.run(
            [*MILLRACE, "shop", "search", "клавиатуры", "--user", "bob"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["Нашлось 1 товаров:", "Компьютеры -> Клавиатура YZA"]
        wait_for(lambda: reader.count_queries("клавиатуры") == 1, timeout_s=30, what="the query indexed")
    finally:
        stop.set()
        thread.join(30)
