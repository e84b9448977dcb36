"""REST routes over the store: sensors, devices, readings, windows, alerts (with lifecycle), quality, model.

Views are thin: they validate input, call Store methods (the Store protocol is safe to call from the
server's worker threads) and shape a page. Store rows are returned as they are, with timestamps in
ISO 8601 UTC.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from millrace.config import Settings
from millrace.ml.registry import promoted_info
from millrace.services.auth import AUTH_RESPONSES, OPERATOR, VIEWER
from millrace.services.problems import JsonResponse, Problem
from millrace.services.schemas import (
    PROBLEM_RESPONSES,
    AlertAction,
    AlertDetail,
    AlertOut,
    DeviceOut,
    ImportanceOut,
    ModelOut,
    Page,
    QualityOut,
    ReadingOut,
    Responses,
    SensorOut,
    WindowOut,
)
from millrace.stores.base import Store

log = logging.getLogger(__name__)
# Every route needs a viewer token (when api.auth is "token"), except the liveness probe on `public`.
router = APIRouter(prefix="/api", responses=PROBLEM_RESPONSES | AUTH_RESPONSES, dependencies=[VIEWER])
public = APIRouter(prefix="/api", responses=PROBLEM_RESPONSES)

T = TypeVar("T")
MAX_LIMIT = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip.")]
Text = Annotated[str | None, Query(min_length=1, max_length=200)]
Time = Annotated[datetime | None, Query(description="ISO 8601; naive values are taken as UTC.")]
SensorId = Annotated[str, Path(min_length=1, max_length=200)]
AlertId = Annotated[str, Path(min_length=1, max_length=200)]
DeviceId = Annotated[str, Path(min_length=1, max_length=200)]
Severity = Literal["info", "warning", "critical"]
Status = Literal["open", "acknowledged", "resolved", "closed"]


def _call(request: Request, fn: Callable[[Store], T]) -> T:
    return fn(request.app.state.store)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is before datetime.min in UTC
        raise Problem(422, f"time {value.isoformat()} is out of range", kind="validation") from None


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = _utc(start), _utc(end)
    if start and end and start > end:
        raise Problem(422, "start must not be after end", kind="validation")
    return start, end


def _page(items: list[Any], limit: int, offset: int, total: int | None = None) -> Response:
    more = len(items) == limit if total is None else offset + len(items) < total
    return JsonResponse(
        {
            "items": items,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + len(items) if more and items else None,
            "total": total,
        }
    )


@public.get("/health", tags=["service"], summary="Liveness, store backend and live-feed state")
def health(request: Request) -> Response:
    state = request.app.state
    feed = state.feed.stats() if state.feed is not None else None
    return JsonResponse(
        {"status": "ok", "store": type(state.store).__name__, "feed": feed, "websocket": state.hub.stats()}
    )


@router.get(
    "/sensors",
    tags=["sensors"],
    response_model=Page[SensorOut],
    summary="Sensors with their latest reading by event time",
    description="Filter by location, type, device or free text (q); paged by sensor_id. The list is shared by "
    "the service's requests and refreshed in the background when older than 2 s, so it may lag the store by "
    "that plus one computation.",
)
def sensors(
    request: Request,
    location: Text = None,
    sensor_type: Text = None,
    device_id: Text = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="Case-insensitive text in sensor, device, type or location."),
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    rows = _sensor_rows(request, location=location, sensor_type=sensor_type, device_id=device_id, q=q)
    return _page(rows[offset : offset + limit], limit, offset, total=len(rows))


def _sensor_rows(
    request: Request,
    *,
    location: str | None = None,
    sensor_type: str | None = None,
    device_id: str | None = None,
    q: str | None = None,
) -> list[dict[str, Any]]:
    """Each sensor's latest reading with its state, filtered, by sensor_id."""
    cache: SensorDirectory | None = getattr(request.app.state, "sensor_directory", None)
    if cache is None:
        cache = request.app.state.sensor_directory = SensorDirectory()
    needle = q.casefold() if q else None
    rows = []
    for merged in cache.get(request.app.state.store):
        if location and merged.get("location") != location:
            continue
        if sensor_type and merged.get("sensor_type") != sensor_type:
            continue
        if device_id and merged.get("device_id") != device_id:
            continue
        if needle is not None and not any(
            needle in str(merged.get(k) or "").casefold() for k in ("sensor_id", "device_id", "sensor_type", "location")
        ):
            continue
        rows.append(merged)
    rows.sort(key=lambda r: str(r["sensor_id"]))
    return rows


class SensorDirectory:
    """Every sensor's latest reading merged with its state, shared by the requests of the service.

    A page of sensors needs all of them (search, sort, total), and on some backends that costs a query per
    sensor (FerretDB: about 6 ms each, 7 s for 1,200 sensors). So the list is computed once and then served
    at once while it is younger than ``max_age_s``: a request that finds it older than ``fresh_s`` starts one
    refresh in the background. The list may lag the store by ``fresh_s`` plus one computation; after
    ``max_age_s`` without requests the next one waits for a fresh list."""

    def __init__(self, fresh_s: float = 2.0, max_age_s: float = 60.0) -> None:
        self.fresh_s = fresh_s
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._at = -math.inf
        self._refreshing = False

    def get(self, store: Store) -> list[dict[str, Any]]:
        with self._lock:
            age = time.monotonic() - self._at
            if age >= self.max_age_s:
                self._rows, self._at = self._compute(store), time.monotonic()
            elif age >= self.fresh_s and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, args=(store,), name="millrace-sensor-list", daemon=True).start()
            return [dict(r) for r in self._rows]

    def _refresh(self, store: Store) -> None:
        try:
            rows = self._compute(store)
            with self._lock:
                self._rows, self._at = rows, time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the next request tries again (and reports a store error itself)
            log.warning("refreshing the sensor list: %s", exc)
        finally:
            self._refreshing = False

    @staticmethod
    def _compute(store: Store) -> list[dict[str, Any]]:
        status = {row["sensor_id"]: row for row in store.sensor_status()}
        rows = []
        for row in store.latest_readings():
            st = status.get(row["sensor_id"], {})
            merged = {**row, "state": st.get("state"), "last_event_time": st.get("last_event_time")}
            merged.pop("features", None)
            rows.append(merged)
        return rows


DEVICE_ALERTS = 200  # per sensor of the device: the device page shows recent history, not all of it


@router.get(
    "/devices/{device_id}",
    tags=["sensors"],
    response_model=DeviceOut,
    responses={404: PROBLEM_RESPONSES[422] | {"description": "Unknown device"}},
    summary="A device: its sensors, their alerts and the promoted model's sensor contributions",
)
def device(request: Request, device_id: DeviceId) -> Response:
    sensors = _sensor_rows(request, device_id=device_id)
    if not sensors:
        raise Problem(404, f"no sensors for device {device_id!r}", kind="not-found")
    store: Store = request.app.state.store
    found: dict[str, dict[str, Any]] = {}
    for sensor in sensors:
        for row in store.alerts(sensor_id=str(sensor["sensor_id"]), limit=DEVICE_ALERTS):
            found[str(row["alert_id"])] = row
    alerts = sorted(found.values(), key=lambda a: (str(a.get("updated_at") or ""), str(a["alert_id"])), reverse=True)
    top: dict[str, int] = {}
    for a in alerts:
        for name in a.get("top_features") or []:
            top[name] = top.get(name, 0) + 1
    info = promoted_info(request.app.state.settings)
    model = None
    if info:
        shares = (info.get("importance") or {}).get("sensors") or {}
        # a device-level model ranks sensor types; a per-sensor one may rank sensor ids
        contributions = {
            str(s["sensor_id"]): shares.get(s["sensor_id"], shares.get(s.get("sensor_type"))) for s in sensors
        }
        model = {"version": info.get("version"), "contributions": contributions}
    return JsonResponse(
        {
            "device_id": device_id,
            "locations": sorted({str(s["location"]) for s in sensors if s.get("location")}),
            "sensors": sensors,
            "alerts": alerts,
            "alert_top_features": dict(sorted(top.items(), key=lambda kv: (-kv[1], kv[0]))),
            "model": model,
        }
    )


@router.get(
    "/sensors/{sensor_id}/readings",
    tags=["sensors"],
    response_model=Page[ReadingOut],
    responses={404: PROBLEM_RESPONSES[422] | {"description": "Unknown sensor"}},
    summary="A sensor's readings over an event-time range, oldest first",
)
def readings(
    request: Request, sensor_id: SensorId, start: Time = None, end: Time = None, limit: Limit = 100, offset: Offset = 0
) -> Response:
    start, end = _range(start, end)
    rows = _call(request, lambda s: s.readings(sensor_id, start=start, end=end, limit=limit, offset=offset))
    known = rows or any(r["sensor_id"] == sensor_id for r in _call(request, lambda s: s.latest_readings()))
    if not known:
        raise Problem(404, f"no readings for sensor {sensor_id!r}", kind="not-found")
    return _page(rows, limit, offset)


@router.get(
    "/windows",
    tags=["metrics"],
    response_model=Page[WindowOut],
    summary="Tumbling-window aggregates per sensor or per type x location",
)
def windows(
    request: Request,
    scope: Literal["sensor", "type_location"] | None = None,
    key: Text = None,
    start: Time = None,
    end: Time = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    start, end = _range(start, end)
    rows = _call(request, lambda s: s.windows(scope=scope, key=key, start=start, end=end, limit=limit, offset=offset))
    return _page(rows, limit, offset)


@router.get("/alerts", tags=["alerts"], response_model=Page[AlertOut], summary="Alerts, newest first")
def alerts(
    request: Request,
    severity: Severity | None = None,
    kind: Text = None,
    sensor_id: Text = None,
    location: Text = None,
    status: Status | None = None,
    start: Time = None,
    end: Time = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    start, end = _range(start, end)
    rows = _call(
        request,
        lambda s: s.alerts(
            severity=severity,
            kind=kind,
            sensor_id=sensor_id,
            location=location,
            status=status,
            start=start,
            end=end,
            limit=limit,
            offset=offset,
        ),
    )
    return _page(rows, limit, offset)


def _alert_or_404(request: Request, alert_id: str) -> dict[str, Any]:
    row = _call(request, lambda s: s.alert(alert_id))
    if row is None:
        raise Problem(404, f"no alert {alert_id!r}", kind="not-found")
    return row


@router.get(
    "/alerts/{alert_id}",
    tags=["alerts"],
    response_model=AlertDetail,
    responses={404: PROBLEM_RESPONSES[422] | {"description": "Unknown alert"}},
    summary="One alert with its lifecycle events",
)
def alert(request: Request, alert_id: AlertId) -> Response:
    row = _alert_or_404(request, alert_id)
    return JsonResponse({**row, "events": _call(request, lambda s: s.alert_events(alert_id))})


def _transition(
    request: Request, alert_id: str, status: Literal["acknowledged", "resolved"], action: AlertAction
) -> Response:
    _alert_or_404(request, alert_id)
    try:
        _call(request, lambda s: s.set_alert_status(alert_id, status, by=action.by.strip(), note=action.note))
    except KeyError:
        raise Problem(404, f"no alert {alert_id!r}", kind="not-found") from None
    except ValueError as exc:
        raise Problem(409, str(exc) or f"alert {alert_id} cannot become {status}", kind="lifecycle") from None
    row = _alert_or_404(request, alert_id)
    return JsonResponse({**row, "events": _call(request, lambda s: s.alert_events(alert_id))})


_LIFECYCLE: Responses = {
    404: PROBLEM_RESPONSES[422] | {"description": "Unknown alert"},
    409: PROBLEM_RESPONSES[422] | {"description": "Lifecycle cannot move backwards"},
}


@router.post(
    "/alerts/{alert_id}/acknowledge",
    tags=["alerts"],
    response_model=AlertDetail,
    responses=_LIFECYCLE,
    dependencies=[OPERATOR],
    summary="open → acknowledged, recorded with who/when (operator role)",
)
def acknowledge(request: Request, alert_id: AlertId, action: AlertAction) -> Response:
    return _transition(request, alert_id, "acknowledged", action)


@router.post(
    "/alerts/{alert_id}/resolve",
    tags=["alerts"],
    response_model=AlertDetail,
    responses=_LIFECYCLE,
    dependencies=[OPERATOR],
    summary="open/acknowledged → resolved, recorded with who/when (operator role)",
)
def resolve(request: Request, alert_id: AlertId, action: AlertAction) -> Response:
    return _transition(request, alert_id, "resolved", action)


@router.get("/quality", tags=["metrics"], response_model=QualityOut, summary="Data-quality counter totals")
def quality(request: Request) -> Response:
    return JsonResponse({"totals": _call(request, lambda s: s.quality_totals())})


def _promoted(settings: Settings) -> dict[str, Any]:
    info = promoted_info(settings)
    if not info:
        raise Problem(404, "no model has been promoted yet (see `millrace ml train`)", kind="no-model")
    return dict(info)


_NO_MODEL: Responses = {404: PROBLEM_RESPONSES[422] | {"description": "No promoted model"}}


@router.get(
    "/model",
    tags=["model"],
    response_model=ModelOut,
    responses=_NO_MODEL,
    summary="The promoted anomaly model: version, detector, metrics, thresholds",
)
def model(request: Request) -> Response:
    info = _promoted(request.app.state.settings)
    info.pop("importance", None)
    return JsonResponse(info)


@router.get(
    "/model/importance",
    tags=["model"],
    response_model=ImportanceOut,
    responses=_NO_MODEL,
    summary="Sensor and feature importance of the promoted model, highest first",
)
def importance(request: Request) -> Response:
    info = _promoted(request.app.state.settings)
    imp = info.get("importance") or {}

    def ranked(values: dict[str, float] | None) -> dict[str, float]:
        return dict(sorted((values or {}).items(), key=lambda kv: -float(kv[1])))

    return JsonResponse(
        {"version": info.get("version"), "sensors": ranked(imp.get("sensors")), "features": ranked(imp.get("features"))}
    )
