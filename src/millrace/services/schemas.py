"""Request bodies and documented response shapes of the REST API (OpenAPI components)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of results. ``next_offset`` is null on the last page."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = None
    total: int | None = Field(default=None, description="Total matches when known cheaply, else null.")


class SensorOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    sensor_id: str
    device_id: str | None = None
    sensor_type: str | None = None
    location: str | None = None
    unit: str | None = None
    timestamp: datetime | None = Field(default=None, description="Event time of the latest reading.")
    value: float | None = None
    score: float | None = None
    is_anomaly: bool | None = None
    anomaly_kind: str | None = None
    state: str | None = Field(default=None, description="active or inactive (from sensor_status).")


class ReadingOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    sensor_id: str
    timestamp: datetime
    value: float | None = None
    interpolated: bool | None = None
    score: float | None = None
    is_anomaly: bool | None = None
    anomaly_kind: str | None = None


class WindowOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    scope: str
    key: str
    sensor_type: str | None = None
    location: str | None = None
    window_start: datetime
    window_end: datetime
    count: int
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    stddev: float | None = None
    anomaly_count: int | None = None


class AlertOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    alert_id: str
    device_id: str | None = None
    sensor_ids: list[str] = []
    kind: str | None = None
    severity: str | None = None
    score: float | None = None
    reason: str | None = None
    location: str | None = None
    opened_at: datetime | None = None
    updated_at: datetime | None = None
    closed_at: datetime | None = None
    status: str
    readings: int | None = None
    top_features: list[str] = []
    recommendation: str | None = Field(default=None, description="The recommended operator action, when known.")
    recommendation_id: str | None = None


class AlertEventOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    alert_id: str
    status: str
    by: str | None = None
    note: str | None = None
    at: datetime | None = None


class AlertDetail(AlertOut):
    events: list[AlertEventOut] = []


class AlertAction(BaseModel):
    """Who changes an alert's lifecycle, and why."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=100, pattern=r"\S", examples=["operator-1"])
    note: str = Field(default="", max_length=2000)


class DeviceModelOut(BaseModel):
    version: Any = None
    contributions: dict[str, float | None] = Field(
        default={}, description="sensor_id → the promoted model's importance of that sensor (or its type)."
    )


class DeviceOut(BaseModel):
    device_id: str
    locations: list[str]
    sensors: list[SensorOut]
    alerts: list[AlertOut]
    alert_top_features: dict[str, int] = Field(description="How often each feature/sensor led the device's alerts.")
    model: DeviceModelOut | None = None


class QualityOut(BaseModel):
    totals: dict[str, int]


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: Any
    created_at: Any = None
    detector: Any = None
    metrics: dict[str, Any] = {}


class ImportanceOut(BaseModel):
    version: Any = None
    sensors: dict[str, float] = {}
    features: dict[str, float] = {}


class TopicCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$", examples=["millrace.lab.test"])
    partitions: int = Field(default=1, ge=1, le=100)
    replication_factor: int = Field(default=1, ge=1, le=32)
    configs: dict[str, str] = Field(default_factory=dict, max_length=50)


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


_PROBLEM_JSON: dict[str, Any] = {"application/problem+json": {}}
Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` documentation type
PROBLEM_RESPONSES: Responses = {
    422: {"model": Problem, "content": _PROBLEM_JSON, "description": "Invalid input"},
    503: {"model": Problem, "content": _PROBLEM_JSON, "description": "Backend unavailable"},
}
