"""The sample catalog shipped with millrace: a few hundred products in Russian, generated deterministically.

``python -m millrace.shop.catalog_gen`` rewrites ``millrace/resources/shop/catalog.json``; the same seed and
count always give the same bytes (a unit test regenerates the file and compares). Products are made for the
shop's demos and tests: every category has several products with Russian names and descriptions whose word
forms differ (клавиатура/клавиатуры, часы/часов), and a few pinned products ("Клавиатура YZA" in
"Компьютеры") are fixed search targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SEED = 22
DEFAULT_COUNT = 300
CURRENCY = "RUB"
STORES = tuple(f"store-{n:02d}" for n in range(1, 9))
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Kind:
    """One kind of product: its noun, category, price range (RUB), brands, tags and specification makers."""

    noun: str
    category: str
    code: str  # SKU prefix
    price: tuple[int, int]
    brands: tuple[str, ...]
    tags: tuple[str, ...]
    features: tuple[str, ...]  # description sentences
    specs: tuple[tuple[str, tuple[Any, ...]], ...]


KINDS: tuple[Kind, ...] = (
    Kind(
        "Клавиатура",
        "Компьютеры",
        "KB",
        (990, 14990),
        ("Logik", "Defendo", "Oklik", "Redragon"),
        ("клавиатура", "периферия", "для офиса"),
        ("Тихие клавиши и русская раскладка", "Подсветка клавиш в три уровня", "Механические переключатели"),
        (("подключение", ("USB", "Bluetooth", "радио 2,4 ГГц")), ("раскладка", ("русская/английская",))),
    ),
    Kind(
        "Мышь",
        "Компьютеры",
        "MS",
        (490, 7990),
        ("Logik", "Defendo", "Oklik"),
        ("мышь", "периферия"),
        ("Эргономичная форма для долгой работы", "Точный оптический сенсор", "Бесшумные кнопки"),
        (("подключение", ("USB", "Bluetooth")), ("разрешение, dpi", (1600, 3200, 12000))),
    ),
    Kind(
        "Монитор",
        "Компьютеры",
        "MN",
        (8990, 59990),
        ("Visio", "Samsan", "Filips"),
        ("монитор", "экран"),
        ("Матрица IPS с широкими углами обзора", "Частота обновления 144 Гц", "Регулировка высоты и наклона"),
        (("диагональ, дюймов", (24, 27, 32)), ("разрешение", ("1920x1080", "2560x1440", "3840x2160"))),
    ),
    Kind(
        "Ноутбук",
        "Ноутбуки",
        "NB",
        (34990, 189990),
        ("Lenova", "Asis", "Acor", "Huawai"),
        ("ноутбук", "для работы", "для учёбы"),
        ("Лёгкий алюминиевый корпус", "Автономность до 12 часов", "Быстрый твердотельный накопитель"),
        (("диагональ, дюймов", (13.3, 14, 15.6, 16)), ("ОЗУ, ГБ", (8, 16, 32)), ("SSD, ГБ", (256, 512, 1024))),
    ),
    Kind(
        "Смартфон",
        "Телефоны",
        "SP",
        (9990, 129990),
        ("Nova", "Sayomi", "Reallme", "Honer"),
        ("смартфон", "телефон", "android"),
        ("Яркий AMOLED-экран", "Тройная камера с ночным режимом", "Быстрая зарядка за 30 минут"),
        (("память, ГБ", (64, 128, 256, 512)), ("камера, Мп", (12, 48, 50, 108)), ("NFC", (True, False))),
    ),
    Kind(
        "Телефон",
        "Телефоны",
        "PH",
        (1490, 4990),
        ("Nokio", "Filips", "Texet"),
        ("телефон", "кнопочный"),
        ("Крупные кнопки и громкий динамик", "Две SIM-карты", "Аккумулятор держит неделю"),
        (("SIM-карт", (1, 2)), ("фонарик", (True, False))),
    ),
    Kind(
        "Умные часы",
        "Умные часы",
        "SW",
        (3990, 49990),
        ("Amazfeet", "Sayomi", "Honer", "Garmen"),
        ("умные часы", "часы", "смарт-часы"),
        ("Пульсометр и контроль сна", "Влагозащита 5 ATM для плавания", "Уведомления со смартфона"),
        (("экран", ("AMOLED", "LCD")), ("автономность, дней", (2, 7, 14)), ("GPS", (True, False))),
    ),
    Kind(
        "Фитнес-браслет",
        "Умные часы",
        "FB",
        (1990, 6990),
        ("Sayomi", "Honer", "Amazfeet"),
        ("фитнес-браслет", "спорт"),
        ("Шагомер и счётчик калорий", "Мониторинг пульса круглые сутки", "Лёгкий силиконовый ремешок"),
        (("автономность, дней", (7, 14, 21)), ("влагозащита", ("IP68", "5 ATM"))),
    ),
    Kind(
        "Наушники",
        "Аудио",
        "HP",
        (990, 34990),
        ("Sonik", "Jbel", "Marshal"),
        ("наушники", "музыка"),
        ("Активное шумоподавление", "До 30 часов музыки без подзарядки", "Складная конструкция"),
        (("тип", ("внутриканальные", "накладные", "полноразмерные")), ("подключение", ("Bluetooth", "провод"))),
    ),
    Kind(
        "Портативная колонка",
        "Аудио",
        "SPK",
        (1990, 24990),
        ("Jbel", "Sonik", "Marshal"),
        ("колонка", "музыка"),
        ("Защита от воды и пыли", "Глубокий бас", "Работает до 20 часов"),
        (("мощность, Вт", (10, 20, 40)),),
    ),
    Kind(
        "Чехол для смартфона",
        "Аксессуары",
        "CS",
        (290, 2490),
        ("Defendo", "Pitaka"),
        ("чехол", "аксессуары"),
        ("Силикон с защитой углов", "Совместим с беспроводной зарядкой", "Противоударный"),
        (("материал", ("силикон", "кожа", "поликарбонат")),),
    ),
    Kind(
        "Зарядное устройство",
        "Аксессуары",
        "CH",
        (590, 4990),
        ("Ankor", "Baseus", "Defendo"),
        ("зарядка", "аксессуары"),
        ("Быстрая зарядка по USB-C", "Два порта", "Защита от перегрева"),
        (("мощность, Вт", (20, 33, 65, 100)),),
    ),
    Kind(
        "Сумка для ноутбука",
        "Аксессуары",
        "BG",
        (990, 6990),
        ("Samsonik", "Defendo"),
        ("сумка", "аксессуары", "ноутбук"),
        ("Мягкое отделение для ноутбука", "Водоотталкивающая ткань", "Плечевой ремень"),
        (("диагональ до, дюймов", (14, 15.6, 17)),),
    ),
    Kind(
        "Ремешок для часов",
        "Аксессуары",
        "ST",
        (390, 2990),
        ("Amazfeet", "Defendo"),
        ("ремешок", "часы", "аксессуары"),
        ("Гипоаллергенный силикон", "Быстросъёмное крепление", "Нейлон с застёжкой-липучкой"),
        (("ширина, мм", (20, 22)),),
    ),
    Kind(
        "Планшет",
        "Планшеты",
        "TB",
        (12990, 99990),
        ("Sayomi", "Lenova", "Honer"),
        ("планшет", "для учёбы"),
        ("Большой экран для фильмов и чтения", "Поддержка стилуса", "Стереодинамики"),
        (("диагональ, дюймов", (8, 10.1, 11, 12.4)), ("память, ГБ", (64, 128, 256))),
    ),
    Kind(
        "Электрический чайник",
        "Бытовая техника",
        "KT",
        (1290, 7990),
        ("Polarys", "Redmont", "Bosh"),
        ("чайник", "кухня"),
        ("Стеклянная колба с подсветкой", "Поддержание температуры", "Автоотключение"),
        (("объём, л", (1.5, 1.7, 2.0)), ("мощность, Вт", (1800, 2200))),
    ),
    Kind(
        "Робот-пылесос",
        "Бытовая техника",
        "VC",
        (9990, 59990),
        ("Sayomi", "Polarys", "Redmont"),
        ("пылесос", "уборка", "умный дом"),
        ("Влажная и сухая уборка", "Построение карты помещения", "Управление со смартфона"),
        (("время работы, мин", (90, 120, 180)),),
    ),
)

# Products every catalog starts with, so search tests and demos have fixed targets.
PINNED: tuple[tuple[str, str, str], ...] = (  # (kind noun, brand, model)
    ("Клавиатура", "Logik", "YZA"),
    ("Умные часы", "Amazfeet", "GTR"),
    ("Смартфон", "Nova", "X12"),
    ("Ноутбук", "Lenova", "Yoga"),
)
ADJECTIVES = ("Надёжный выбор на каждый день", "Популярная модель", "Новинка сезона", "Лучшая цена в категории")


def _model_code(rng: random.Random, taken: set[str]) -> str:
    while True:
        letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXZ") for _ in range(3))
        code = letters if rng.random() < 0.5 else f"{letters}{rng.randint(1, 99)}"
        if code not in taken:
            taken.add(code)
            return code


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _product(index: int, kind: Kind, brand: str, model: str, rng: random.Random) -> dict[str, Any]:
    low, high = kind.price
    amount = float(max(low, round(rng.uniform(low, high), -2) - 10))  # prices like 4990
    available = rng.randint(0, 500)
    created = EPOCH + timedelta(days=rng.randint(0, 300), seconds=rng.randint(0, 86_399))
    updated = created + timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86_399))
    features = rng.sample(kind.features, 2)
    specs = {name: rng.choice(values) for name, values in kind.specs}
    tags = list(kind.tags)
    if rng.random() < 0.2:
        tags.append("хит продаж")
    name = f"{kind.noun} {model}" if index < len(PINNED) else f"{kind.noun} {brand} {model}"
    return {
        "id": f"p{index + 1:05d}",
        "name": name,
        "description": f"{kind.noun} {brand} {model}. {rng.choice(ADJECTIVES)}. {features[0]}. {features[1]}.",
        "category": kind.category,
        "brand": brand,
        "sku": f"{kind.code}-{brand[:3].upper()}-{model}",
        "price": {"amount": amount, "currency": CURRENCY},
        "stock": {"available": available, "reserved": rng.randint(0, min(available, 25))},
        "specifications": specs,
        "tags": tags,
        "store_id": rng.choice(STORES),
        "created_at": _iso(created),
        "updated_at": _iso(updated),
    }


def generate_catalog(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """``count`` products (at least the pinned ones), the same for the same seed. Kinds are dealt round-robin
    after the pinned products, so every category has many products; model codes are unique."""
    if count < len(PINNED):
        raise ValueError(f"count must be at least {len(PINNED)} (the pinned products)")
    rng = random.Random(seed)
    by_noun = {kind.noun: kind for kind in KINDS}
    taken = {model for _, _, model in PINNED}
    products = [_product(i, by_noun[noun], brand, model, rng) for i, (noun, brand, model) in enumerate(PINNED)]
    for i in range(len(PINNED), count):
        kind = KINDS[(i - len(PINNED)) % len(KINDS)]
        products.append(_product(i, kind, rng.choice(kind.brands), _model_code(rng, taken), rng))
    return products


def dump_catalog(products: list[dict[str, Any]]) -> str:
    """The catalog file's text: a JSON array, one product per line, UTF-8 (not \\u escapes)."""
    lines = ",\n".join(json.dumps(p, ensure_ascii=False, separators=(", ", ": ")) for p in products)
    return f"[\n{lines}\n]\n"


def default_output() -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "shop" / "catalog.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate millrace's sample shop catalog.")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=default_output())
    args = parser.parse_args(argv)
    products = generate_catalog(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_catalog(products), encoding="utf-8")
    logging.basicConfig(level="INFO", format="%(message)s")
    log.info("wrote %d products to %s", len(products), args.out)


if __name__ == "__main__":
    main()
