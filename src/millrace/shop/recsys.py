"""Recommendations trained on the orders lake (``millrace shop recommend-train``; docs/shop-recommendations.md):
three recommenders compared on a time hold-out, the best published.

:func:`compare` fits each model of recsys_models on the orders before the hold-out and scores its top-K
(K = 10) with the metrics of recsys_feedback, where the feedback, the hold-out and the metrics are defined.
The model with the best NDCG@K is the best (a tie goes to the simpler model); :func:`train_and_publish`
refits it on every order and its top ``top_n`` per user goes to the recommendations topic and the coverage to
shop analytics (recsys_publish). A lake that cannot be compared on fails with DataError before Spark starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from millrace.config import AnalyticsSettings, Settings
from millrace.shop.recsys_feedback import HoldOut, K, Matrix, evaluate, hold_out, interactions
from millrace.shop.recsys_models import MODELS, fit_scores, top_k
from millrace.shop.recsys_publish import publish_coverage, publish_recommendations

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


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
        result.analytics_published = publish_coverage(settings, best, result.coverage, lines)
    result.seconds = time.monotonic() - started
    return result
