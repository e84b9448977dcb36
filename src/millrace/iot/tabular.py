"""Read recorded sensor data sets (CSV or Parquet, long or wide) into readings, keeping every bad row.

- **Long** layout: one reading per row - a time column, a value column and a sensor (or sensor type)
  column; optional device, location and label columns.
- **Wide** layout (most public industrial data sets): a time column and one numeric column per sensor;
  optional label column. An empty cell is a missing measurement (no reading), not an error.

Columns are detected by name when not given (``timestamp``/``time``/``datetime``..., ``value``,
``sensor_id``/``sensor``, ``sensor_type``/``type``, ``label``/``anomaly``/``ground_truth``...). A sensor's
*type* is never guessed from a name: it comes from a ``types`` mapping (column or sensor name -> type, see
:mod:`millrace.iot.type_mapping`), else from the long layout's type column, else it is
:data:`~millrace.records.GENERIC_TYPE` - no physical range, so a recording in units other than the simulator's
is neither dead-lettered nor flagged as out of range for its column's name. The CSV
separator is sniffed from the first lines (``,`` ``;`` tab ``|``). A row whose time or a value cannot be
parsed is not used at all; it is returned in ``bad_rows`` with its row number (the file's line number for
CSV, header = line 1; the 1-based row for Parquet), the reason and the raw text - never dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pandas as pd

from millrace.errors import ColumnError, DataError, UsageError
from millrace.records import ANOMALY_KINDS, GENERIC_TYPE, NORMAL, UNITS

log = logging.getLogger(__name__)
Layout = Literal["auto", "long", "wide"]
BadRow = tuple[int, str, str]  # (row number, reason, raw text)

FRAME_COLUMNS: tuple[str, ...] = (
    "sensor_id", "device_id", "sensor_type", "unit", "location", "timestamp", "value", "ground_truth", "row",
)  # fmt: skip
_TIME_NAMES = ("timestamp", "time", "datetime", "date_time", "date", "ts", "event_time", "time_stamp")
_VALUE_NAMES = ("value", "reading", "measurement", "val")
_SENSOR_NAMES = ("sensor_id", "sensor", "sensor_name", "tag", "signal", "channel")
_TYPE_NAMES = ("sensor_type", "type", "kind", "measurement_type")
_DEVICE_NAMES = ("device_id", "device", "machine", "machine_id", "asset")
_LOCATION_NAMES = ("location", "site", "plant", "line")
_LABEL_NAMES = (
    "ground_truth",
    "label",
    "labels",
    "anomaly",
    "is_anomaly",
    "attack",
    "fault",
    "machine_status",
)
_NORMAL_LABELS = {"", "0", "0.0", "false", "normal", "ok", "no", "none", "nan"}
_ANOMALY_LABELS = {"1", "1.0", "true", "anomaly", "anomalous", "yes", "abnormal", "fault", "attack"}


@dataclass
class TableReadings:
    """The readings of a table (long format, file order) and the rows that could not be used."""

    frame: pd.DataFrame  # FRAME_COLUMNS
    bad_rows: list[BadRow] = field(default_factory=list)
    layout: str = "long"
    columns: dict[str, str | None] = field(default_factory=dict)  # role -> column used
    separator: str | None = None
    rows: int = 0  # data rows read (good + bad)


def slug(text: str) -> str:
    """A name usable in ids: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-") or "x"


def normalize_label(value: object) -> str:
    """Ground truth from a label cell: "normal", an anomaly kind, "anomaly" for a true/1 flag, else the
    lower-cased text."""
    text = str(value).strip().lower() if value is not None else ""
    if text in _NORMAL_LABELS:
        return NORMAL
    if text in _ANOMALY_LABELS:
        return "anomaly"
    kind = text.replace(" ", "_").replace("-", "_")
    return kind if kind in ANOMALY_KINDS else text


def read_table(
    path: str | Path,
    *,
    sep: str | None = None,
    time_column: str | None = None,
    label_column: str | None = None,
    layout: Layout = "auto",
    sensor_column: str | None = None,
    value_column: str | None = None,
    type_column: str | None = None,
    device_column: str | None = None,
    location_column: str | None = None,
    ignore_columns: Sequence[str] = (),
    device: str | None = None,
    location: str = "loc-01",
    types: Mapping[str, str] | None = None,
) -> TableReadings:
    """Read ``path`` into readings. ``device`` defaults to the file name's slug (used when the data has no
    device column); ``location`` is used when it has no location column. ``types`` maps a column (wide
    layout) or sensor (long layout: a value of the sensor column, else of the type column) to its sensor type;
    it wins over the type column, and a sensor neither maps nor declares is of GENERIC_TYPE. Names it maps
    that the data lack are logged as a warning. Raises DataError for an empty file, an unknown column, a
    missing label column when one is asked for, or a sensor column with no numbers."""
    path = Path(path)
    sep = check_separator(sep)
    if layout not in ("auto", "long", "wide"):
        raise UsageError(f"expected auto, long or wide, got {layout!r}", param_hint="--layout")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw, numbers, separator = _load(path, sep)
    if raw.empty or not len(raw.columns):
        raise DataError(f"{path}: the file has no data rows")
    columns = list(raw.columns)
    for role, given in (
        ("time", time_column), ("label", label_column), ("sensor", sensor_column), ("value", value_column),
        ("type", type_column), ("device", device_column), ("location", location_column),
    ):  # fmt: skip
        if given is not None and given not in columns:
            raise ColumnError(
                f"{path}: no {role} column {given!r} (--{role}-column); columns are {', '.join(map(str, columns))}"
            )
    time_col = time_column or _find(columns, _TIME_NAMES)
    if time_col is None:
        raise ColumnError(f"{path}: no time column found (tried {', '.join(_TIME_NAMES)}); name it with --time-column")
    label_col = label_column or _find(columns, _LABEL_NAMES)
    value_col = value_column or _find(columns, _VALUE_NAMES)
    sensor_col = sensor_column or _find(columns, _SENSOR_NAMES)
    type_col = type_column or _find(columns, _TYPE_NAMES)
    if layout == "auto":
        layout = "long" if value_col is not None and (sensor_col or type_col) else "wide"
    base_device = device or slug(path.stem.split(".")[0])
    if layout == "long":
        if value_col is None or (sensor_col is None and type_col is None):
            raise DataError(f"{path}: long layout needs a value column and a sensor or type column")
        names = set(raw[sensor_col or type_col].astype(str).str.strip())  # type: ignore[index]
        frame, bad, used = _long(
            raw,
            numbers,
            time_col,
            value_col,
            sensor_col,
            type_col,
            label_col,
            device_column or _find(columns, _DEVICE_NAMES),
            location_column or _find(columns, _LOCATION_NAMES),
            base_device,
            location,
            types or {},
        )
    else:
        skip = {time_col, label_col, *ignore_columns}
        names = {str(c) for c in columns if c not in skip}
        frame, bad, used = _wide(
            path,
            raw,
            numbers,
            time_col,
            [c for c in columns if c not in skip],
            label_col,
            base_device,
            location,
            types or {},
        )
    unused = [name for name in types or {} if name not in names]
    if unused:  # most likely a typo, and the sensor it meant is then of the generic type
        log.warning(
            "%s: the type mapping names no %s of the file: %s",
            path,
            "sensor" if layout == "long" else "sensor column",
            ", ".join(map(repr, unused)),
        )
    used = {"time": time_col, "label": label_col, **used}
    return TableReadings(frame, bad, layout, used, separator, len(raw) + len(raw.attrs.get("bad_width", [])))


def check_separator(sep: str | None) -> str | None:
    """The CSV separator as one character (``\\t`` and ``tab`` mean a tab), or UsageError naming --sep."""
    if sep is None:
        return None
    if sep in ("\\t", "tab"):
        return "\t"
    if len(sep) != 1 or sep in ('"', "\n", "\r"):
        raise UsageError(f"expected one character such as , ; | or \\t, got {sep!r}", param_hint="--sep")
    return sep


def _find(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return str(lowered[name])
    return None


def _load(path: str | Path, sep: str | None) -> tuple[pd.DataFrame, pd.Series, str | None]:
    """All cells as strings (Parquet: as stored), with each row's number; for CSV rows with the wrong
    number of fields are returned as bad rows via a ``__bad__`` marker column."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: cannot read Parquet: {exc}") from exc
        return frame.reset_index(drop=True), pd.Series(np.arange(1, len(frame) + 1)), None
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:  # type: ignore[operator]
        text = handle.read()
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if sep is None:
        sep = sniff_separator(text)
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: the file has no header line")
    header = [h.strip() for h in header]
    width = len(header)
    rows: list[list[str]] = []
    numbers: list[int] = []
    bad: list[tuple[int, list[str]]] = []
    for fields in reader:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if len(fields) != width:
            bad.append((reader.line_num, fields))
            continue
        rows.append(fields)
        numbers.append(reader.line_num)
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header)
    frame.attrs["bad_width"] = [(n, f"expected {width} fields, found {len(f)}", sep.join(f)) for n, f in bad]
    frame.attrs["sep"] = sep
    if frame.empty and not bad:
        raise DataError(f"{path}: the file has no data rows")
    return frame, pd.Series(numbers, dtype=np.int64), sep


def sniff_separator(text: str) -> str:
    """The separator among , ; tab | that splits the header and the first lines into the same number of
    fields (the most fields on a tie); ``,`` when none does."""
    lines = [line for line in text.splitlines()[:30] if line.strip()]
    best, best_score = ",", (0.0, 0)
    for candidate in (",", ";", "\t", "|"):
        header = lines[0].count(candidate)
        if header == 0:
            continue
        consistent = sum(line.count(candidate) == header for line in lines) / len(lines)
        if (consistent, header) > best_score:
            best, best_score = candidate, (consistent, header)
    return best


def _times(series: pd.Series) -> pd.Series:
    """Parse a time column to datetime64[ns, UTC]; NaT where a cell cannot be parsed. Numbers are epoch
    seconds, or milliseconds when large."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
        out = pd.to_datetime(series, utc=True)
        return out.dt.as_unit("ns")
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().all() and len(series):
        unit = "ms" if float(numeric.abs().max()) > 1e11 else "s"
        return pd.to_datetime(numeric, unit=unit, utc=True).dt.as_unit("ns")
    text = series.astype(str).str.strip()
    out = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    missing = out.isna() & (text != "")
    if missing.any():
        out[missing] = pd.to_datetime(text[missing], utc=True, errors="coerce", format="mixed")
    missing = out.isna() & numeric.notna()
    if missing.any():  # epoch numbers among text times
        unit = "ms" if float(numeric[missing].abs().max()) > 1e11 else "s"
        out[missing] = pd.to_datetime(numeric[missing], unit=unit, utc=True)
    return out.dt.as_unit("ns")


def _numbers(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(values, empty mask, bad mask) of a value column."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        return values, values.isna(), pd.Series(False, index=series.index)
    text = series.astype(str).str.strip()
    empty = series.isna() | text.isin(["", "nan", "NaN", "NA", "null", "None"])
    values = pd.to_numeric(text.where(~empty), errors="coerce")
    bad = values.isna() & ~empty
    return values.astype(float), empty, bad


def _raw_text(raw: pd.DataFrame, i: int, sep: str | None) -> str:
    row = raw.iloc[i]
    if sep is None:
        return orjson.dumps({str(k): str(v) for k, v in row.items()}).decode()
    return sep.join("" if v is None else str(v) for v in row.tolist())


def _bad_list(raw: pd.DataFrame, numbers: pd.Series, reasons: pd.Series, sep: str | None) -> list[BadRow]:
    out = list(raw.attrs.get("bad_width", []))
    for i in np.flatnonzero(reasons.notna().to_numpy()):
        out.append((int(numbers.iloc[i]), str(reasons.iloc[i]), _raw_text(raw, int(i), sep)))
    return sorted(out)


def _labels(raw: pd.DataFrame, label_col: str | None) -> pd.Series | None:
    if label_col is None:
        return None
    return raw[label_col].map(normalize_label).astype(object)


def _long(
    raw: pd.DataFrame,
    numbers: pd.Series,
    time_col: str,
    value_col: str,
    sensor_col: str | None,
    type_col: str | None,
    label_col: str | None,
    device_col: str | None,
    location_col: str | None,
    device: str,
    location: str,
    mapping: Mapping[str, str],
) -> tuple[pd.DataFrame, list[BadRow], dict[str, str | None]]:
    times = _times(raw[time_col])
    values, empty, bad_value = _numbers(raw[value_col])
    ident = raw[sensor_col if sensor_col is not None else type_col].astype(str).str.strip()
    reasons = pd.Series(None, index=raw.index, dtype=object)
    reasons[ident.isin(["", "nan", "None"])] = f"empty sensor in column {sensor_col or type_col!r}"
    reasons[empty] = f"empty value in column {value_col!r}"
    reasons[bad_value] = (
        "non-numeric value " + raw[value_col].astype(str).str.slice(0, 40).map(repr) + f" in column {value_col!r}"
    )
    reasons[times.isna()] = "unparseable time " + raw[time_col].astype(str).str.slice(0, 60).map(repr)
    good = reasons.isna().to_numpy()
    if not good.any() and bad_value.all() and len(raw):
        raise DataError(f"value column {value_col!r} has no numeric values (e.g. {raw[value_col].iloc[0]!r})")
    devices = raw[device_col].astype(str).str.strip() if device_col else pd.Series(device, index=raw.index)
    if type_col is not None:  # the file declares types: taken as written; an empty cell declares none
        types = raw[type_col].astype(str).str.strip()
        types = types.where(~types.isin(["", "nan", "None"]), GENERIC_TYPE)
    else:
        types = pd.Series(GENERIC_TYPE, index=raw.index, dtype=object)
    if mapping:
        types = ident.map(mapping).fillna(types)
    sensor_ids = ident if sensor_col is not None else devices + "-" + ident.map(slug)
    labels = _labels(raw, label_col)
    frame = pd.DataFrame(
        {
            "sensor_id": sensor_ids.astype(object),
            "device_id": devices.astype(object),
            "sensor_type": types.astype(object),
            "unit": types.map(lambda t: UNITS.get(t, "")).astype(object),
            "location": (raw[location_col].astype(str).str.strip() if location_col else location),
            "timestamp": times,
            "value": values,
            "ground_truth": labels if labels is not None else None,
            "row": numbers.to_numpy(),
        }
    )[good].reset_index(drop=True)
    used = {
        "value": value_col,
        "sensor": sensor_col,
        "type": type_col,
        "device": device_col,
        "location": location_col,
    }
    return frame[list(FRAME_COLUMNS)], _bad_list(raw, numbers, reasons, raw.attrs.get("sep")), used


def _wide(
    path: Path,
    raw: pd.DataFrame,
    numbers: pd.Series,
    time_col: str,
    sensor_cols: list[str],
    label_col: str | None,
    device: str,
    location: str,
    mapping: Mapping[str, str],
) -> tuple[pd.DataFrame, list[BadRow], dict[str, str | None]]:
    if not sensor_cols:
        raise DataError(f"{path}: no sensor columns besides the time and label columns")
    times = _times(raw[time_col])
    reasons = pd.Series(None, index=raw.index, dtype=object)
    parsed: dict[str, pd.Series] = {}
    any_value = pd.Series(False, index=raw.index)
    for col in sensor_cols:
        values, empty, bad = _numbers(raw[col])
        if bad.all() and len(raw):
            raise DataError(
                f"{path}: column {col!r} has no numeric values (e.g. {raw[col].iloc[0]!r}); give it as "
                f"--label-column or leave it out with --ignore-column"
            )
        first_bad = bad & reasons.isna()
        reasons[first_bad] = (
            "non-numeric value " + raw[col].astype(str).str.slice(0, 40).map(repr) + f" in column {col!r}"
        )
        parsed[col] = values
        any_value |= ~empty
    reasons[~any_value & reasons.isna()] = "no sensor values in the row"
    reasons[times.isna()] = "unparseable time " + raw[time_col].astype(str).str.slice(0, 60).map(repr)
    good = reasons.isna().to_numpy()
    labels = _labels(raw, label_col)
    parts = []
    for order, col in enumerate(sensor_cols):
        values = parsed[col]
        keep = good & values.notna().to_numpy()
        sensor_type = mapping.get(str(col), GENERIC_TYPE)
        parts.append(
            pd.DataFrame(
                {
                    "sensor_id": f"{device}-{slug(str(col))}",
                    "device_id": device,
                    "sensor_type": sensor_type,
                    "unit": UNITS.get(sensor_type, ""),
                    "location": location,
                    "timestamp": times[keep],
                    "value": values[keep],
                    "ground_truth": labels[keep] if labels is not None else None,
                    "row": numbers.to_numpy()[keep],
                    "_order": order,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True).sort_values(["row", "_order"], kind="stable")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    frame["timestamp"] = frame["timestamp"].dt.as_unit("ns")
    used: dict[str, str | None] = {"sensors": ", ".join(map(str, sensor_cols))}
    return frame[list(FRAME_COLUMNS)], _bad_list(raw, numbers, reasons, raw.attrs.get("sep")), used
