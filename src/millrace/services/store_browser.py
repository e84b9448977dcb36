"""The store browser under /api/store: every collection of the active backend, its rows filtered, ranged,
sorted and paged, one row as JSON, and a streamed CSV export.

Views are thin: stores.browse checks every name and value against the store's schema and the backend runs
the query. An unknown row is a 404 problem; an unknown collection, field or a bad value a 422 problem naming
it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from millrace.records import to_iso
from millrace.services.auth import AUTH_RESPONSES, VIEWER
from millrace.services.problems import JsonResponse, Problem
from millrace.services.schemas import PROBLEM_RESPONSES, Responses
from millrace.stores import browse
from millrace.stores.base import FIELD_KINDS, KEYS, TIME_FIELDS, BrowseQuery, Store

router = APIRouter(
    prefix="/api/store", tags=["store"], responses=PROBLEM_RESPONSES | AUTH_RESPONSES, dependencies=[VIEWER]
)

T = TypeVar("T")
MAX_LIMIT = 1000
CSV_ROWS_PER_CHUNK = 500
CollectionName = Literal[
    "sensor_metrics", "anomaly_alerts", "alert_events", "windowed_metrics", "data_quality", "sensor_status",
    "shop_analytics",
]  # fmt: skip
assert get_args(CollectionName) == tuple(FIELD_KINDS), "the path's names are the store's collections"
Collection = Annotated[CollectionName, Path(description="A collection (table) of the store.")]
Filters = Annotated[
    list[str],
    Query(
        alias="filter",
        max_length=browse.MAX_FILTERS,
        description="field<op>value with op one of = != < <= > >= (repeat for AND), e.g. value>=20, "
        "sensor_id=dev-0001-temperature, is_anomaly=true, timestamp<2026-03-01T12:00:05Z. A list field "
        "(sensor_ids) takes = only: it contains the value.",
    ),
]
From = Annotated[str | None, Query(alias="from", max_length=64, description="ISO 8601, inclusive (time field).")]
To = Annotated[str | None, Query(alias="to", max_length=64, description="ISO 8601, exclusive (time field).")]
Sort = Annotated[
    str | None,
    Query(max_length=100, description="A field, ascending, or -field, descending (default: -time field)."),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip.")]
NOT_FOUND: Responses = {404: PROBLEM_RESPONSES[422] | {"description": "Unknown collection or row"}}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _checked(fn: Callable[[], T]) -> T:
    """Run ``fn``; an unknown collection is a 404 problem, a bad name or value a 422 naming it."""
    try:
        return fn()
    except KeyError as exc:
        raise Problem(404, str(exc.args[0]) if exc.args else "not found", kind="not-found") from None
    except ValueError as exc:
        raise Problem(422, str(exc), kind="validation") from None


def _query(
    collection: str, filters: list[str], time_from: str | None, time_to: str | None, sort: str | None, **page: int
) -> BrowseQuery:
    return _checked(
        lambda: browse.make_query(collection, filters=filters, time_from=time_from, time_to=time_to, sort=sort, **page)
    )


@router.get("/collections", summary="Every collection of the active store backend with its row count")
def collections(request: Request) -> Response:
    store = _store(request)
    counts = store.collections()
    return JsonResponse(
        {
            "backend": type(store).__name__,
            "collections": [
                {
                    "name": name,
                    "count": count,
                    "time_field": TIME_FIELDS[name],
                    "key": list(KEYS[name]),
                    "fields": [{"name": f, "kind": k} for f, k in FIELD_KINDS[name].items()],
                }
                for name, count in counts.items()
            ],
        }
    )


@router.get(
    "/collections/{collection}/rows",
    responses=NOT_FOUND,
    summary="Rows of a collection: filtered, in a time range, sorted, one page",
)
def rows(
    request: Request,
    collection: Collection,
    filters: Filters = [],  # noqa: B006 - FastAPI copies query defaults
    time_from: From = None,
    time_to: To = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    query = _query(collection, filters, time_from, time_to, sort, limit=limit, offset=offset)
    page = _checked(lambda: _store(request).browse(collection, query))
    more = offset + len(page.rows) < page.total
    return JsonResponse(
        {
            "collection": collection,
            "time_field": TIME_FIELDS[collection],
            "sort": ("-" if query.descending else "") + (query.sort or TIME_FIELDS[collection]),
            "items": page.rows,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + len(page.rows) if more and page.rows else None,
            "total": page.total,
        }
    )


@router.get(
    "/collections/{collection}/rows/{key:path}",
    responses=NOT_FOUND,
    summary="One row by its key (the fields of the collection's key joined with |, times in epoch ms)",
)
def row(request: Request, collection: Collection, key: str) -> Response:
    if not key or len(key) > 1000:
        raise Problem(422, "key: 1 to 1000 characters", kind="validation")
    found = _checked(lambda: _store(request).document(collection, key))
    if found is None:
        raise Problem(404, f"no row {key!r} in {collection}", kind="not-found")
    return JsonResponse(found)


@router.get(
    "/collections/{collection}/export.csv",
    responses=NOT_FOUND | {200: {"content": {"text/csv": {}}, "description": "UTF-8 CSV, a header row first"}},
    response_class=StreamingResponse,
    summary="Every row matching the filters as CSV (streamed, UTF-8)",
)
def export_csv(
    request: Request,
    collection: Collection,
    filters: Filters = [],  # noqa: B006 - FastAPI copies query defaults
    time_from: From = None,
    time_to: To = None,
    sort: Sort = None,
) -> StreamingResponse:
    query = _query(collection, filters, time_from, time_to, sort)
    found = _checked(lambda: _store(request).scan(collection, query))  # checked before the first byte
    return StreamingResponse(
        csv_chunks(list(FIELD_KINDS[collection]), found),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{collection}.csv"'},
    )


def csv_chunks(fields: list[str], found: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """The header and then the rows as UTF-8 CSV, a few hundred rows per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(fields)
    for n, item in enumerate(found, 1):
        writer.writerow([csv_cell(item.get(f)) for f in fields])
        if n % CSV_ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def csv_cell(value: Any) -> str:
    """Empty for null (and NaN), ISO 8601 UTC for times, true/false, JSON for lists."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return to_iso(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, list | tuple):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)
