"""Alertmanager's webhook payload (version 4) → millrace alerts of kind ``infrastructure``.

An infrastructure alert lives in the same alert list as the sensor alerts (the store's ``anomaly_alerts``),
so operators see a stalled pipeline next to the anomalies it stops reporting. It fits the Alert record:

- ``alert_id``  ``am-<fingerprint>-<startsAt in epoch ms>``: Alertmanager sends an alert again on every
  group interval and repeat; the same firing keeps its fingerprint and startsAt, so a resend updates one row
  and a new firing of the same rule (a new startsAt) is a new row
- ``kind`` "infrastructure"; ``device_id`` the ``instance`` label (the process or broker it is about)
- ``reason`` "<alertname>: <summary>" (an alertname is a Prometheus label value without ": " in practice;
  :func:`split_reason` reads it back); ``recommendation`` the ``description`` annotation when it says more
- ``status`` "open" while firing, "closed" with ``closed_at`` = endsAt once resolved — the same job-side
  close the stream job uses, so an operator's acknowledged/resolved survives it (stores/base.py)
- ``opened_at`` startsAt; ``updated_at`` startsAt while firing, endsAt once resolved (taken from the
  payload, not the clock, so a replayed notification changes nothing)

Pure logic: no I/O here (services/monitoring.py stores and broadcasts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from millrace.records import Alert, Severity

KIND = "infrastructure"
WEBHOOK_VERSION = "4"
_FINGERPRINT = re.compile(r"^[0-9a-fA-F]{1,64}$")
# Go writes nanoseconds; Python parses at most microseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")
# Alertmanager's "no end" (Go's zero time) and anything before Prometheus existed is not a time.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
SEVERITIES: dict[str, Severity] = {
    "critical": "critical",
    "page": "critical",
    "error": "critical",
    "warning": "warning",
    "warn": "warning",
    "info": "info",
    "none": "info",
}


class PayloadError(ValueError):
    """The payload is not an Alertmanager webhook notification; the message names the field."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert of a webhook notification, as millrace keeps it, with the labels it came with."""

    alert: Alert
    alertname: str
    instance: str
    summary: str
    labels: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The alert's JSON (as the alerts list serves it) plus the Alertmanager fields, for the live feed."""
        return {
            **self.alert.to_dict(),
            "alertname": self.alertname,
            "instance": self.instance,
            "summary": self.summary,
            "labels": dict(self.labels),
            "source": "alertmanager",
        }


def parse_time(text: Any, field: str) -> datetime | None:
    """An Alertmanager timestamp (RFC 3339, up to nanoseconds); None for Go's zero time or an empty value."""
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        raise PayloadError(f"{field}: expected an RFC 3339 time, got {type(text).__name__}")
    try:
        ts = datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(f"{field}: {text[:60]!r} is not an RFC 3339 time") from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return None if ts < _EARLIEST else ts


def severity_of(labels: dict[str, str]) -> Severity:
    """The ``severity`` label as millrace's severity; an unknown or missing one counts as a warning."""
    return SEVERITIES.get(labels.get("severity", "").strip().lower(), "warning")


def alert_id_of(fingerprint: str, starts_at: datetime) -> str:
    return f"am-{fingerprint.lower()}-{int(starts_at.timestamp() * 1000)}"


def split_reason(reason: str) -> tuple[str, str]:
    """(alertname, summary) of an infrastructure alert's reason."""
    name, _, summary = reason.partition(": ")
    return name, summary


def _strings(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{field}: expected an object")
    return {str(k): str(v) for k, v in value.items()}


def parse_alert(item: Any, index: int = 0) -> Notification:
    """One entry of the payload's ``alerts``; PayloadError names what is wrong (``alerts[i].field``)."""
    where = f"alerts[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(f"{where}: expected an object")
    status = item.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status: expected firing or resolved, got {status!r}")
    labels = _strings(item.get("labels"), f"{where}.labels")
    annotations = _strings(item.get("annotations"), f"{where}.annotations")
    alertname = labels.get("alertname", "").strip()
    if not alertname:
        raise PayloadError(f"{where}.labels.alertname: missing")
    fingerprint = str(item.get("fingerprint") or "")
    if not _FINGERPRINT.match(fingerprint):
        raise PayloadError(f"{where}.fingerprint: expected hex digits, got {fingerprint[:80]!r}")
    starts_at = parse_time(item.get("startsAt"), f"{where}.startsAt")
    if starts_at is None:
        raise PayloadError(f"{where}.startsAt: missing")
    ends_at = parse_time(item.get("endsAt"), f"{where}.endsAt") if status == "resolved" else None
    if status == "resolved":
        # Alertmanager always sets endsAt on a resolved alert; a missing one still closes it, at its start.
        ends_at = max(ends_at or starts_at, starts_at)
    summary = annotations.get("summary") or annotations.get("message") or ""
    description = annotations.get("description", "").strip()
    instance = labels.get("instance", "")
    alert = Alert(
        alert_id=alert_id_of(fingerprint, starts_at),
        device_id=instance,
        sensor_ids=(),
        kind=KIND,
        severity=severity_of(labels),
        score=math.nan,  # a Prometheus alert has no anomaly score (stored and served as null)
        reason=f"{alertname}: {summary}" if summary else alertname,
        location=labels.get("location", ""),
        opened_at=starts_at,
        updated_at=ends_at or starts_at,
        closed_at=ends_at,
        status="closed" if status == "resolved" else "open",
        readings=1,
        recommendation=description if description and description != summary else None,
    )
    return Notification(alert=alert, alertname=alertname, instance=instance, summary=summary, labels=labels)


def parse_payload(payload: Any) -> list[Notification]:
    """Every alert of one webhook notification, in payload order. Raises PayloadError (naming the field)
    for anything that is not a version-4 Alertmanager notification."""
    if not isinstance(payload, dict):
        raise PayloadError("body: expected a JSON object (Alertmanager's webhook payload)")
    version = str(payload.get("version", ""))
    if version != WEBHOOK_VERSION:
        raise PayloadError(f"version: expected {WEBHOOK_VERSION!r} (Alertmanager's webhook), got {version!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: expected a list")
    return [parse_alert(item, i) for i, item in enumerate(alerts)]
