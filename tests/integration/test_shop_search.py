"""Search fed through the real pipeline: items -> filter -> filtered-items -> index service -> tantivy, and the
client's search command recording its query in client-search and the query index."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from millrace.config import Settings
from millrace.shop import stoplist
from millrace.shop.filter import StopListFilter
from millrace.shop.indexer import IndexStats, run_indexer
from millrace.shop.search import SearchRequest
from millrace.shop.search_tantivy import TantivyBackend
from tests.helpers import unique, wait_for
from tests.integration.test_shop_filter import (
    MILLRACE,
    ShopTopics,
    committed,
    produce_items,
    running_filter,  # noqa: F401 - a fixture
    shop_env,
    shop_topics,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration

VISIBLE_WITHIN_S = 10.0


def product(product_id: str, name: str, category: str, brand: str, price: float, description: str = "") -> bytes:
    record = {
        "id": product_id,
        "name": name,
        "description": description,
        "category": category,
        "brand": brand,
        "price": {"amount": price, "currency": "RUB"},
        "tags": [],
    }
    return json.dumps(record, ensure_ascii=False).encode()


CATALOG = [
    ("kbd", product("kbd", "Клавиатура YZA", "Компьютеры", "YZA", 3500, "Механическая клавиатура")),
    ("watch", product("watch", "Умные часы Ёж", "Электроника", "Tick", 12000, "Часы с пульсометром")),
    ("wrist", product("wrist", "Наручные часы", "Аксессуары", "Tick", 4500, "Кварцевые часы")),
    # framed as confluent-kafka's JSONSerializer frames it (magic byte, schema id)
    ("mouse", b"\x00\x00\x00\x00\x07" + product("mouse", "Мышь беспроводная", "Компьютеры", "YZA", 900)),
]


@pytest.fixture
def indexed(settings: Settings, shop_topics: ShopTopics, tmp_path: Path) -> Iterator[TantivyBackend]:  # noqa: F811
    """The index service in a thread, writing tmp_path/search; yields a reader of that index."""
    backend = TantivyBackend(tmp_path / "search")
    stop, stats, failed = threading.Event(), IndexStats(), []

    def run() -> None:
        try:
            result = run_indexer(
                settings.kafka.client_config(),
                backend,
                products_topic=shop_topics.filtered,
                queries_topic=shop_topics.client_search,
                group=unique("index"),
                stop=stop,
            )
            stats.__dict__.update(result.__dict__)
        except BaseException as exc:
            failed.append(exc)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield TantivyBackend(tmp_path / "search", writer=False)
    stop.set()
    thread.join(30)
    backend.close()
    assert not thread.is_alive() and not failed, failed


def found(reader: TantivyBackend, text: str) -> list[str]:
    return sorted(h.id for h in reader.search(SearchRequest(text)).hits)


def test_search_through_the_pipeline(
    settings: Settings,
    shop_topics: ShopTopics,  # noqa: F811
    running_filter: StopListFilter,  # noqa: F811
    indexed: TantivyBackend,
    tmp_path: Path,
) -> None:
    conf = settings.kafka.client_config()
    produce_items(conf, shop_topics.items, CATALOG)
    wait_for(lambda: indexed.search(SearchRequest("")).total == 4, timeout_s=30, what="4 products indexed")
    # Russian word forms, a one-letter typo, ё/е
    assert found(indexed, "клавиатуры") == ["kbd"]
    assert found(indexed, "часов") == ["watch", "wrist"]
    assert found(indexed, "клавиатцра") == ["kbd"]
    assert found(indexed, "умные часы еж") == ["watch"]
    assert indexed.search(SearchRequest("", category="Компьютеры")).facets["brand"] == {"YZA": 2}

    # a block removes the product from search within seconds, without a restart
    started = time.monotonic()
    stoplist.block(conf, shop_topics.stop_list, ["kbd"], "test")
    wait_for(lambda: found(indexed, "клавиатура") == [], timeout_s=VISIBLE_WITHIN_S, what="kbd gone from search")
    assert time.monotonic() - started < VISIBLE_WITHIN_S
    # an update while blocked stays out; the unblock brings back the latest version
    produce_items(conf, shop_topics.items, [("kbd", product("kbd", "Клавиатура ZX", "Компьютеры", "ZX", 4000))])
    started = time.monotonic()
    stoplist.unblock(conf, shop_topics.stop_list, ["kbd"])
    wait_for(lambda: found(indexed, "клавиатуры") == ["kbd"], timeout_s=VISIBLE_WITHIN_S, what="kbd back in search")
    assert time.monotonic() - started < VISIBLE_WITHIN_S
    (hit,) = indexed.search(SearchRequest("клавиатура")).hits
    assert (hit.name, hit.brand, hit.price) == ("Клавиатура ZX", "ZX", 4000.0)

    # the client's search: the answer from the index, the query in client-search and in the query index
    done = subprocess.run(
        [*MILLRACE, "shop", "search", "умные часы", "--user", "alice"],
        env=shop_env(settings, shop_topics, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Нашлось 1 товаров:", "Электроника -> Умные часы Ёж"]
    (record,) = [json.loads(v) for k, v in committed(conf, shop_topics.client_search) if v is not None]
    assert {k: v for k, v in record.items() if k != "timestamp"} == {
        "type": "search",
        "user": "alice",
        "query": "умные часы",
        "results": 1,
    }
    assert record["timestamp"].endswith("+00:00")
    wait_for(lambda: indexed.count_queries("умные часы") == 1, timeout_s=VISIBLE_WITHIN_S, what="the query indexed")
    assert indexed.count_queries() == 1


def test_search_without_an_index_is_one_line(settings: Settings, shop_topics: ShopTopics, tmp_path: Path) -> None:  # noqa: F811
    done = subprocess.run(
        [*MILLRACE, "shop", "search", "часы"],
        env=shop_env(settings, shop_topics, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: no search index in {tmp_path / 'search'}: run `millrace shop index` first"
    ]
