"""GET /api/shop/analytics: the latest run of each shop analytics metric, read from the store.

``millrace shop analytics`` (and ``shop recommend-train`` for recommendation_coverage) write the metrics; this
view only reads them, so it answers from the store alone — 503 when the store cannot be reached, like every
route that reads it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from millrace.records import to_iso
from millrace.services.auth import AUTH_RESPONSES, VIEWER
from millrace.services.problems import JsonResponse
from millrace.services.schemas import PROBLEM_RESPONSES
from millrace.stores.base import Store

router = APIRouter(prefix="/api/shop", tags=["shop"], responses=PROBLEM_RESPONSES | AUTH_RESPONSES)

MetricName = Annotated[str, Field(min_length=1, max_length=100)]


class MetricValueOut(BaseModel):
    dimensions: dict[str, str]
    value: float
    window_start: str
    window_end: str


class AnalyticsOut(BaseModel):
    computed_at: str | None = Field(description="When the newest of these runs was computed (null: none yet).")
    metrics: dict[str, list[MetricValueOut]] = Field(
        description="metric -> its values in the latest run of that metric; ranked metrics (top_products, "
        "search_queries, zero_result_queries) by rank, the others by window then dimensions."
    )


def analytics_answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The route's JSON from the store's latest rows (``Store.latest_analytics``)."""
    metrics: dict[str, list[dict[str, Any]]] = {}
    newest = None
    for row in sorted(rows, key=_order):
        if newest is None or row["computed_at"] > newest:
            newest = row["computed_at"]
        metrics.setdefault(row["metric"], []).append(
            {
                "dimensions": row["dimensions"],
                "value": row["value"],
                "window_start": to_iso(row["window_start"]),
                "window_end": to_iso(row["window_end"]),
            }
        )
    return {"computed_at": None if newest is None else to_iso(newest), "metrics": metrics}


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    rank = row["dimensions"].get("rank", "")
    return (row["metric"], int(rank) if rank.isdigit() else 0, row["window_start"], sorted(row["dimensions"].items()))


@router.get(
    "/analytics",
    dependencies=[VIEWER],
    response_model=AnalyticsOut,
    summary="The shop's analytics: the latest run of each metric (sales, top products, categories, queries)",
)
def analytics(
    request: Request,
    metric: Annotated[
        list[MetricName] | None,
        Query(max_length=50, description="Only these metrics (repeat the parameter); default: every metric."),
    ] = None,
) -> Response:
    store: Store = request.app.state.store
    return JsonResponse(analytics_answer(store.latest_analytics(metric)))
