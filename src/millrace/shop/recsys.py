"""Recommendations trained on the orders lake: three recommenders compared on a time hold-out, the best published.

Feedback is implicit: a user (the order's ``customer_id``) bought a product in an order that was never
cancelled (an order with any ``cancelled`` event is dropped whole; an order still open counts). The lake holds
one row per order line and event, so an order's lines are taken once, at the order's creation. The
strength of a (user, product) pair is the number of orders in which the user bought it.

Hold-out: the orders of the last ``holdout_days`` before the newest order are the test period; the models
learn from the orders before it. A user is evaluated when they bought before the cut and bought, after it, at
least one product they had not bought before and that is not blocked.

What is recommended: the top ``k`` products a user has **not bought yet** (repeat purchases are a "buy again"
list, not a discovery) and that are **not blocked** (the stop list), from the products the lake knows. The
metrics follow the same rule, so that no model is scored on what none may recommend: the relevant products of
a user are the new, unblocked products they bought in the test period. Binary relevance:

* precision@k = hits in the top k / k (a list shorter than k is not rewarded);
* recall@k = hits in the top k / relevant products;
* NDCG@k = sum over hits at rank r of 1/log2(r + 1), divided by the same sum for the first min(k, relevant)
  ranks; each averaged over the evaluated users.

Models: ``popularity`` (users who bought the product), ``cooccurrence`` (item–item: cosine of the products'
buyer sets, summed over what the user bought) and ``als`` (Spark MLlib ALS with ``implicitPrefs``). Ties and
the end of a short list are settled by popularity, then product id, the same way for every model. The model
with the best NDCG@k is refitted on every order and its top ``top_n`` per user goes to the recommendations
topic (keyed by user, compacted; framed with the recommendation schema when ``shop.use_registry``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import AnalyticsSettings, Settings
from millrace.errors import DataError, MillraceError

log = logging.getLogger(__name__)

K = 10  # the cut-off of the compared metrics (P@10, R@10, NDCG@10)
MODELS = ("als", "cooccurrence", "popularity")
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- metrics


def precision_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    return sum(1 for p in recommended[:k] if p in relevant) / k


def recall_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    if not relevant:
        raise ValueError("recall is undefined without relevant products")
    return sum(1 for p in recommended[:k] if p in relevant) / len(relevant)


def ndcg_at_k(recommended: Sequence[str], relevant: set[str], k: int = K) -> float:
    if not relevant:
        raise ValueError("NDCG is undefined without relevant products")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, p in enumerate(recommended[:k]) if p in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    return dcg / ideal


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    ndcg: float
    users: int


def evaluate(lists: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], k: int = K) -> Scores:
    """The mean metrics over the users of ``relevant`` (a user without a list scores 0)."""
    if not relevant:
        raise DataError("no user to evaluate: nobody bought a new product in the hold-out period")
    p = r = n = 0.0
    for user, rel in relevant.items():
        rec = lists.get(user, [])
        p += precision_at_k(rec, rel, k)
        r += recall_at_k(rec, rel, k)
        n += ndcg_at_k(rec, rel, k)
    users = len(relevant)
    return Scores(p / users, r / users, n / users, users)


# ------------------------------------------------------------------------------------------- the data


def interactions(orders: pd.DataFrame) -> pd.DataFrame:
    """One row per (order, product) of the orders never cancelled: order_id, user, product_id, at (the
    order's creation), quantity. ``orders`` has the lake's columns (one row per line and event)."""
    needed = {"order_id", "customer_id", "status", "event_ts", "product_id", "quantity"}
    missing = needed - set(orders.columns)
    if missing:
        raise DataError(f"the lake's orders lack the columns {sorted(missing)}")
    if orders.empty:
        return pd.DataFrame(
            {
                "order_id": pd.Series(dtype=str),
                "user": pd.Series(dtype=str),
                "product_id": pd.Series(dtype=str),
                "at": pd.Series(dtype="datetime64[ms, UTC]"),
                "quantity": pd.Series(dtype="int64"),
            }
        )
    cancelled = set(orders.loc[orders["status"] == "cancelled", "order_id"])
    live = orders[~orders["order_id"].isin(cancelled)]
    # every event of an order carries all its lines: the first archived event's lines, a product once per order
    first_ts = live.groupby("order_id")["event_ts"].transform("min")
    first = live[live["event_ts"] == first_ts].copy()
    # the order's creation time (the lake's created_at; else its first archived event)
    when = "created_at" if "created_at" in first.columns else "event_ts"
    first["at"] = first.groupby("order_id")[when].transform("min")
    lines = (
        first.groupby(["order_id", "customer_id", "product_id", "at"], as_index=False)["quantity"]
        .max()
        .rename(columns={"customer_id": "user"})
    )
    return lines.sort_values(["at", "order_id", "product_id"], ignore_index=True)


@dataclass(frozen=True)
class HoldOut:
    cutoff: pd.Timestamp
    train: pd.DataFrame  # interactions before the cut
    test: pd.DataFrame  # interactions from the cut on
    relevant: dict[str, set[str]]  # evaluated user -> new, unblocked products bought from the cut on
    users_in_both: int  # users who bought before and after the cut (some only bought again)


def hold_out(lines: pd.DataFrame, days: float, blocked: Iterable[str] = ()) -> HoldOut:
    if lines.empty:
        raise DataError("the lake holds no orders that were not cancelled: run `millrace shop archive` first")
    cutoff = lines["at"].max() - pd.Timedelta(days=days)
    train, test = lines[lines["at"] < cutoff], lines[lines["at"] >= cutoff]
    if train.empty:
        span = (lines["at"].max() - lines["at"].min()).total_seconds() / 86400
        raise DataError(
            f"every order is in the hold-out period: the lake spans {span:.1f} days, analytics.holdout_days is {days:g}"
        )
    bought = train.groupby("user")["product_id"].agg(set).to_dict()
    stop = set(blocked)
    relevant: dict[str, set[str]] = {}
    both = 0
    for user, products in test.groupby("user")["product_id"].agg(set).items():
        if user not in bought:
            continue
        both += 1
        new = products - bought[user] - stop
        if new:
            relevant[str(user)] = new
    if not relevant:
        raise DataError(
            f"no user bought a new product both before and after the cut at {cutoff.isoformat()}: archive more "
            f"orders or change analytics.holdout_days ({days:g})"
        )
    return HoldOut(cutoff, train, test, relevant, both)


@dataclass(frozen=True)
class Matrix:
    """Orders per (user, product) as a dense matrix over sorted user and product ids."""

    users: list[str]
    items: list[str]
    counts: np.ndarray  # float64, users x items

    @classmethod
    def of(cls, lines: pd.DataFrame) -> Matrix:
        users = sorted(lines["user"].unique())
        items = sorted(lines["product_id"].unique())
        counts = np.zeros((len(users), len(items)))
        u = pd.Index(users).get_indexer(lines["user"])
        i = pd.Index(items).get_indexer(lines["product_id"])
        np.add.at(counts, (u, i), 1.0)
        return cls(users, items, counts)

    @property
    def popularity(self) -> np.ndarray:
        """Buyers per product."""
        return (self.counts > 0).sum(axis=0).astype(float)


# ------------------------------------------------------------------------------------------ the models


def popularity_scores(m: Matrix) -> np.ndarray:
    return np.tile(m.popularity, (len(m.users), 1))


def cooccurrence_scores(m: Matrix) -> np.ndarray:
    """Sum, over the products a user bought, of each product's cosine similarity of buyer sets with them."""
    bought = (m.counts > 0).astype(float)
    together = bought.T @ bought  # users who bought both products
    np.fill_diagonal(together, 0.0)
    buyers = np.sqrt(m.popularity)
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.nan_to_num(together / np.outer(buyers, buyers))
    return bought @ similarity


def als_scores(
    m: Matrix, spark: Any, cfg: AnalyticsSettings, *, checkpoint_dir: str | None = None, seed: int = 0
) -> np.ndarray:
    """Fit Spark MLlib's ALS with implicit feedback on the order counts; user factors . item factors.

    ALS's lineage grows with every iteration; without checkpoints (every 5 iterations into ``checkpoint_dir``)
    serialising a task of a long fit overflows the driver's stack."""
    from pyspark.ml.recommendation import ALS

    if checkpoint_dir is not None:
        spark.sparkContext.setCheckpointDir(checkpoint_dir)

    u, i = np.nonzero(m.counts)
    frame = pd.DataFrame({"user": u.astype("int32"), "item": i.astype("int32"), "rating": m.counts[u, i]})
    als = ALS(
        rank=cfg.als_rank,
        maxIter=cfg.als_iterations,
        regParam=cfg.als_reg,
        alpha=cfg.als_alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
        checkpointInterval=5,
        seed=seed,
    )
    model = als.fit(spark.createDataFrame(frame))
    users = np.zeros((len(m.users), cfg.als_rank))
    items = np.zeros((len(m.items), cfg.als_rank))
    for target, factors in ((users, model.userFactors), (items, model.itemFactors)):
        for row in factors.collect():
            target[row["id"]] = row["features"]
    return users @ items.T


def top_k(m: Matrix, scores: np.ndarray, k: int, blocked: Iterable[str] = ()) -> dict[str, list[tuple[str, float]]]:
    """Each user's ``k`` best products by score, then popularity, then product id; never a product the user
    bought (in ``m``) nor a blocked one."""
    allowed = ~np.isin(np.array(m.items, dtype=object), list(set(blocked)))
    popularity = m.popularity
    order_by_id = np.arange(len(m.items))
    result: dict[str, list[tuple[str, float]]] = {}
    for row, user in enumerate(m.users):
        candidates = np.nonzero(allowed & (m.counts[row] == 0))[0]
        s = scores[row, candidates]
        ranked = candidates[np.lexsort((order_by_id[candidates], -popularity[candidates], -s))][:k]
        result[user] = [(m.items[j], float(scores[row, j])) for j in ranked]
    return result


def fit_scores(
    name: str, m: Matrix, *, spark: Any, cfg: AnalyticsSettings, checkpoint_dir: str | None = None
) -> np.ndarray:
    if name == "popularity":
        return popularity_scores(m)
    if name == "cooccurrence":
        return cooccurrence_scores(m)
    if name == "als":
        return als_scores(m, spark, cfg, checkpoint_dir=checkpoint_dir)
    raise ValueError(f"unknown model {name!r}")


# ---------------------------------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class ModelReport:
    model: str
    precision: float
    recall: float
    ndcg: float
    users: int
    fit_seconds: float


@dataclass
class TrainResult:
    reports: list[ModelReport]
    best: str
    holdout: HoldOut
    lists: dict[str, dict[str, list[str]]]  # model -> evaluated user -> its top-K in the hold-out comparison
    blocked: list[str]
    orders: int  # orders never cancelled
    users: int  # users with such orders
    products: int
    published: int = 0  # users whose recommendations were written
    topic: str = ""
    coverage: float = 0.0  # share of the users with at least one recommendation
    analytics_published: int = 0  # coverage records written to shop analytics (the topic and the store)
    seconds: float = 0.0
    records: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # published: user -> top-N

    def as_dict(self) -> dict[str, Any]:
        return {
            "models": [r.__dict__ for r in self.reports],
            "best": self.best,
            "k": K,
            "cutoff": self.holdout.cutoff.isoformat(),
            "train_lines": len(self.holdout.train),
            "test_lines": len(self.holdout.test),
            "users_in_both": self.holdout.users_in_both,
            "users_evaluated": len(self.holdout.relevant),
            "orders": self.orders,
            "users": self.users,
            "products": self.products,
            "blocked": self.blocked,
            "topic": self.topic,
            "published_users": self.published,
            "coverage": self.coverage,
            "analytics_published": self.analytics_published,
            "seconds": round(self.seconds, 2),
        }


def compare(
    lines: pd.DataFrame,
    *,
    cfg: AnalyticsSettings,
    blocked: Iterable[str] = (),
    spark: Any = None,
    checkpoint_dir: str | None = None,
    models: Sequence[str] = MODELS,
    progress: Progress | None = None,
) -> tuple[list[ModelReport], HoldOut, dict[str, dict[str, list[str]]]]:
    """Fit each model on the orders before the hold-out and score its top-K on the hold-out. ``spark`` (and
    ``checkpoint_dir``, see :func:`als_scores`) are for ``als`` only."""
    say = progress or (lambda _: None)
    stop = sorted(set(blocked))
    holdout = hold_out(lines, cfg.holdout_days, stop)
    matrix = Matrix.of(holdout.train)
    reports, lists = [], {}
    for name in models:
        say(f"fitting {name} on {len(holdout.train)} order lines before {holdout.cutoff:%Y-%m-%d %H:%M}")
        started = time.monotonic()
        scores = fit_scores(name, matrix, spark=spark, cfg=cfg, checkpoint_dir=checkpoint_dir)
        seconds = time.monotonic() - started
        ranked = top_k(matrix, scores, K, stop)
        lists[name] = {u: [p for p, _ in ranked.get(u, [])] for u in holdout.relevant}
        s = evaluate(lists[name], holdout.relevant)
        reports.append(ModelReport(name, s.precision, s.recall, s.ndcg, s.users, seconds))
    return reports, holdout, lists


def best_of(reports: Sequence[ModelReport]) -> str:
    """The best NDCG@K; a tie goes to the simpler model (popularity, then co-occurrence, then ALS)."""
    simplicity = {"popularity": 0, "cooccurrence": 1, "als": 2}
    return min(reports, key=lambda r: (-round(r.ndcg, 12), simplicity.get(r.model, 9))).model


def recommendation_record(user: str, items: Sequence[tuple[str, float]], model: str, at: str) -> dict[str, Any]:
    """A value of the recommendations topic (the recommendation schema)."""
    return {
        "user": user,
        "items": [{"product_id": p, "score": round(s, 6)} for p, s in items],
        "model": model,
        "generated_at": at,
    }


def train_and_publish(
    settings: Settings,
    session: Callable[[], Any],
    *,
    models: Sequence[str] = MODELS,
    publish: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Read the lake, compare the models on the hold-out, refit the best on every order and publish each
    user's top ``analytics.top_n`` to the recommendations topic (and the coverage to shop analytics).
    ``session()`` gives the SparkSession for ALS (the caller's wiring: jobs.session.build_session); it is
    called only when ``als`` is compared, once the stop list and the lake have answered."""
    from millrace.shop.lake import open_lake
    from millrace.shop.stoplist import load_stop_list

    say = progress or (lambda _: None)
    started = time.monotonic()
    cfg = settings.analytics
    client_config = settings.kafka.client_config()
    say(f"reading the stop list {settings.topics.shop_stop_list}")
    blocked = [e.product_id for e in load_stop_list(client_config, settings.topics.shop_stop_list).blocked()]
    lake = open_lake(settings)
    say(f"reading the orders lake at {lake.spark_url}")
    lines = interactions(lake.read_orders())
    hold_out(lines, cfg.holdout_days, blocked)  # a lake that cannot be compared on fails before Spark starts
    spark, checkpoints = None, None
    if "als" in models:
        say("starting Spark")
        spark = session()
        checkpoints = str((settings.state_dir / "checkpoints" / "recommend-train").resolve())
    reports, holdout, lists = compare(
        lines, cfg=cfg, blocked=blocked, spark=spark, checkpoint_dir=checkpoints, models=models, progress=say
    )
    best = best_of(reports)
    result = TrainResult(
        reports,
        best,
        holdout,
        lists,
        blocked,
        orders=int(lines["order_id"].nunique()),
        users=int(lines["user"].nunique()),
        products=int(lines["product_id"].nunique()),
    )
    if publish:
        say(f"refitting {best} on all {len(lines)} order lines")
        matrix = Matrix.of(lines)
        scores = fit_scores(best, matrix, spark=spark, cfg=cfg, checkpoint_dir=checkpoints)
        ranked = top_k(matrix, scores, cfg.top_n, blocked)
        result.records = {u: items for u, items in ranked.items() if items}
        result.topic = settings.topics.shop_recommendations
        say(f"publishing {len(result.records)} users' recommendations to {result.topic}")
        result.published = publish_recommendations(settings, result.records, best)
        result.coverage = len(result.records) / result.users if result.users else 0.0
        result.analytics_published = _publish_coverage(settings, result, lines)
    result.seconds = time.monotonic() - started
    return result


def publish_recommendations(settings: Settings, records: Mapping[str, Sequence[tuple[str, float]]], model: str) -> int:
    """Write one record per user (keyed by user) and wait for every delivery; returns how many were delivered."""
    from millrace.kafka.producer import make_producer

    topic = settings.topics.shop_recommendations
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    serialize: Callable[[dict[str, Any], str], bytes]
    if settings.shop.use_registry:
        from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
        from millrace.shop.schemas import load_schema

        url = settings.shop.registry_url
        client = registry_client(url)
        schema = load_schema("recommendation")
        register(client, url, subject_for(topic), schema, settings.shop.compatibility)
        serialize = json_serializer(client, schema)
    else:

        def serialize(value: dict[str, Any], _topic: str) -> bytes:
            return json.dumps(value, ensure_ascii=False).encode("utf-8")

    producer = make_producer(settings.kafka.client_config(), compression=settings.kafka.compression)
    for user, items in records.items():
        producer.produce(topic, serialize(recommendation_record(user, items, model, at), topic), user)
    remaining = producer.flush(60.0)
    if producer.stats.failed or remaining:
        raise MillraceError(
            f"{producer.stats.failed + remaining} of {len(records)} recommendations were not delivered to {topic}"
        )
    return producer.stats.delivered


def _publish_coverage(settings: Settings, result: TrainResult, lines: pd.DataFrame) -> int:
    """The share of users with recommendations as shop analytics' ``recommendation_coverage`` (by model)."""
    from millrace.shop.analytics import publish_metrics

    metric = {
        "metric": "recommendation_coverage",
        "window_start": lines["at"].min().isoformat(),
        "window_end": lines["at"].max().isoformat(),
        "dimensions": {"model": result.best},
        "value": result.coverage,
        "computed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return publish_metrics(settings, [metric])
