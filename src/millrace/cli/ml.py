"""``millrace ml``: train, explain, list, show, promote and evaluate anomaly models."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from millrace.cli.common import console, err_console, print_json, settings_of
from millrace.errors import DataError, UsageError
from millrace.ml.sources import DEFAULT_WINDOW_HOURS

app = typer.Typer(name="ml", help="Anomaly model: train, explain, registry, evaluate.", no_args_is_help=True)


# Anomaly rate of the fleet `ml train --source simulate` trains on: dense anomalies teach the detector more
# (docs/detection-quality.md: chosen on the development sets, sparse and dense alike).
SIMULATE_RATES = (0.15,)


class Source(enum.StrEnum):
    simulate = "simulate"
    file = "file"
    store = "store"


TimeColumn = Annotated[str | None, typer.Option(help="Time column (default: detected by name).")]
LabelColumn = Annotated[str | None, typer.Option(help="Label column: 0/1, normal/anomaly or kind names.")]
Sep = Annotated[str | None, typer.Option(help="CSV separator (default: detected).")]
LayoutOpt = Annotated[str, typer.Option(help="auto, long (one reading per row) or wide (one column per sensor).")]
SensorCol = Annotated[str | None, typer.Option(help="Long layout: sensor id column.")]
ValueCol = Annotated[str | None, typer.Option(help="Long layout: value column.")]
TypeCol = Annotated[str | None, typer.Option(help="Long layout: sensor type column.")]
Ignore = Annotated[list[str] | None, typer.Option(help="Wide layout: a column that is not a sensor (repeatable).")]
TypesFile = Annotated[
    Path | None,
    typer.Option(
        "--types",
        exists=True,
        dir_okay=False,
        help="Sensor type per column or sensor: a .toml or .csv (column,type) file.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document, nothing else.")]


def _read_opts(sep, time_column, label_column, layout, sensor_column, value_column, type_column, ignore, types=None):  # type: ignore[no-untyped-def]
    from millrace.iot.type_mapping import read_type_mapping
    from millrace.ml.evaluate import ReadOptions

    return ReadOptions(
        sep,
        time_column,
        label_column,
        layout,
        sensor_column,
        value_column,
        type_column,
        tuple(ignore or ()),
        read_type_mapping(types) if types is not None else None,
    )


@app.command()
def train(
    ctx: typer.Context,
    source: Annotated[Source, typer.Option(help="Where the readings come from.")] = Source.simulate,
    file: Annotated[
        list[Path] | None, typer.Option("--file", "-f", help="--source file: CSV/Parquet (repeatable).")
    ] = None,
    window: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="--source store: hours of readings to train on, ending at the newest stored reading "
            "(at most 200,000 per sensor, the newest).",
        ),
    ] = DEFAULT_WINDOW_HOURS,
    devices: Annotated[int, typer.Option(min=1, help="--source simulate: devices (6 sensors each).")] = 10,
    hours: Annotated[float, typer.Option(min=0.1, help="--source simulate: hours of data.")] = 6.0,
    seed: Annotated[int, typer.Option(help="--source simulate: fleet seed; also the detectors' seed.")] = 1,
    anomaly_rate: Annotated[
        list[float] | None,
        typer.Option(
            min=0,
            max=0.5,
            help="--source simulate: share of sensor-time in anomalies; repeat to add a fleet per value "
            "(seeds SEED, SEED+1, ...; default 0.15: dense anomalies teach the detector more).",
        ),
    ] = None,
    detector: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "auto (default: labelled anomalies train the supervised per-reading detectors, otherwise a "
                "device-level detector picked from the rows), a device-level pca|dpca|mcd|iforest|univariate, or "
                "per-reading detectors to compare (robust_z, isolation_forest, mahalanobis, gradient_boosting; "
                "repeatable)."
            )
        ),
    ] = None,
    target_far: Annotated[
        float,
        typer.Option(min=0.0001, max=0.4, help="Device-level: false-alarm rate the threshold is set to (0.01 = 1 %)."),
    ] = 0.01,
    promote: Annotated[bool, typer.Option(help="Promote the new model (the stream job switches to it).")] = False,
    time_column: TimeColumn = None,
    label_column: LabelColumn = None,
    sep: Sep = None,
    layout: LayoutOpt = "auto",
    sensor_column: SensorCol = None,
    value_column: ValueCol = None,
    type_column: TypeCol = None,
    ignore_column: Ignore = None,
    types: TypesFile = None,
    json_: Json = False,
) -> None:
    """Train detectors on readings, keep the best by validation metric, register it (and --promote it)."""
    import pandas as pd

    from millrace.ml.evaluate import read_readings
    from millrace.ml.train import train as run

    settings = settings_of(ctx)
    if source is Source.simulate:
        from millrace.iot.simulator import FleetConfig, simulate_frame

        rates = anomaly_rate or list(SIMULATE_RATES)
        frames = []
        for i, rate in enumerate(rates):
            start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=(seed + 3 * i) % 365)
            cfg = FleetConfig(devices=devices, seed=seed + i, start=start, anomaly_rate=rate)
            frame = simulate_frame(cfg, duration_s=hours * 3600)
            if len(rates) > 1:  # one fleet per rate: keep their devices apart
                frame["device_id"] = frame["device_id"] + f"-r{i + 1}"
                frame["sensor_id"] = frame["device_id"] + "-" + frame["sensor_type"]
            frames.append(frame)
        readings = pd.concat(frames, ignore_index=True)
        described = (
            f"simulate devices={devices} hours={hours:g} seed={seed} anomaly_rate={','.join(f'{r:g}' for r in rates)}"
        )
    elif source is Source.file:
        if not file:
            raise UsageError("--source file needs --file PATH", param_hint="--file")
        opts = _read_opts(
            sep, time_column, label_column, layout, sensor_column, value_column, type_column, ignore_column, types
        )
        readings = pd.concat(
            [read_readings(p, opts, need_labels=label_column is not None) for p in file], ignore_index=True
        )
        described = "file " + ", ".join(map(str, file))
    else:
        from millrace.ml.sources import store_readings

        readings = store_readings(settings, window_hours=window)
        first, last = readings["timestamp"].min(), readings["timestamp"].max()
        described = f"store {settings.store.backend} window={window:g}h ({first.isoformat()} .. {last.isoformat()})"

    def say(message: str) -> None:
        if not json_:
            err_console.print(f"[{'yellow' if message.startswith('warning') else 'dim'}]{message}[/]")

    from millrace.ml.device import DETECTORS as DEVICE_DETECTORS
    from millrace.ml.train_device import train_device, wants_supervised

    chosen = list(detector or ["auto"])
    device_level = [d for d in chosen if d in DEVICE_DETECTORS]
    if device_level and len(chosen) > 1:
        raise UsageError("a device-level detector is trained alone, not compared with others", param_hint="--detector")
    why = ""
    if chosen == ["auto"]:
        supervised, why = wants_supervised(readings)
        say(f"auto: {why}")
        chosen = [] if supervised else ["auto"]
    if chosen and (device_level or chosen == ["auto"]):
        info = train_device(
            settings,
            readings,
            source=described,
            detector=chosen[0],
            target_far=target_far,
            seed=seed,
            make_promoted=promote,
            why=why,
            progress=say,
        )
    else:
        info = run(
            settings,
            readings,
            source=described,
            detectors=chosen or None,
            seed=seed,
            make_promoted=promote,
            progress=say,
        )
    if json_:
        print_json(info)
        return
    _print_summary(info, promoted=promote)


def _metric(info: dict[str, Any]) -> str:
    val = info.get("metrics", {}).get("validation", {})
    if "f1" in val:
        return f"F1 {val['f1']:.3f}  FAR {val['false_alarm_rate']:.2%}"
    return f"alarms {val.get('alarm_rate', 0):.2%}"


def _print_summary(info: dict[str, Any], *, promoted: bool) -> None:
    table = Table(title=f"model {info['version']}: kept {info['detector']}" + (" (promoted)" if promoted else ""))
    for col in ("detector", "F1", "precision", "recall", "false alarms", "fit s"):
        table.add_column(col, justify="right" if col != "detector" else "left")
    for name, m in info["metrics"]["compared"].items():
        if "f1" in m:
            table.add_row(
                name,
                f"{m['f1']:.3f}",
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{m['false_alarm_rate']:.2%}",
                f"{m['fit_seconds']:.1f}",
            )
        else:
            table.add_row(name, "-", "-", "-", f"{m['alarm_rate']:.2%}", f"{m['fit_seconds']:.1f}")
    console.print(table)


@app.command("list")
def list_(ctx: typer.Context, json_: Json = False) -> None:
    """Registered model versions, oldest first; * marks the promoted one."""
    from millrace.ml.registry import load_info, promoted_version, registry_root, versions

    root = registry_root(settings_of(ctx))
    current = promoted_version(root)
    infos = [load_info(root, v) for v in versions(root)]
    if json_:
        print_json(
            [
                {
                    **{k: i[k] for k in ("version", "created_at", "detector", "metrics")},
                    "promoted": i["version"] == current,
                }
                for i in infos
            ]
        )
        return
    if not infos:
        console.print(f"no models in {root}; train one with `millrace ml train`")
        return
    table = Table(title=str(root))
    for col in ("", "version", "created", "detector", "validation", "readings"):
        table.add_column(col)
    for i in infos:
        table.add_row(
            "*" if i["version"] == current else "",
            i["version"],
            i["created_at"],
            i["detector"],
            _metric(i),
            f"{i['training']['readings']:,}",
        )
    console.print(table)


def _version_or_promoted(root: Path, version: str | None) -> str:
    from millrace.ml.registry import promoted_version, versions

    if version:
        return version
    chosen = promoted_version(root) or (versions(root)[-1] if versions(root) else None)
    if chosen is None:
        raise DataError(f"no models in {root}; train one with `millrace ml train`")
    return chosen


@app.command()
def show(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Default: promoted.")] = None,
    json_: Json = False,
) -> None:
    """A model's model.json: detector, metrics, thresholds, features, importance, training summary."""
    from millrace.ml.registry import load_info, registry_root

    root = registry_root(settings_of(ctx))
    info = load_info(root, _version_or_promoted(root, version))
    if json_:
        print_json(info)
        return
    console.print(f"[bold]{info['version']}[/] {info['detector']} created {info['created_at']}: {_metric(info)}")
    console.print(
        "thresholds: "
        + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["thresholds"].items())
    )
    features = list(info.get("features") or [])
    console.print(f"inputs ({len(features)}): " + ", ".join(features))
    table = Table(title="training data", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in info["training"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    _print_summary(info, promoted=False)


@app.command()
def promote(ctx: typer.Context, version: Annotated[str, typer.Argument(help="The version to promote.")]) -> None:
    """Make VERSION the model the stream job scores with (a running job scores its next batch with it)."""
    from millrace.ml.registry import promote as run
    from millrace.ml.registry import registry_root

    info = run(registry_root(settings_of(ctx)), version)
    console.print(f"promoted {info['version']} ({info['detector']}, {_metric(info)})")


@app.command()
def explain(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Default: the promoted (else latest) model.")] = None,
    chart: Annotated[Path | None, typer.Option(help="PNG path (default: <model dir>/importance.png).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Features to list.")] = 10,
    json_: Json = False,
) -> None:
    """Which sensors and features predict anomalies (permutation importance saved with the model)."""
    from millrace.ml.explain import plot_importance
    from millrace.ml.registry import load_info, registry_root

    root = registry_root(settings_of(ctx))
    info = load_info(root, _version_or_promoted(root, version))
    importance = info["importance"]
    path = plot_importance(
        importance, chart or root / info["version"] / "importance.png", title=f"{info['version']} {info['detector']}"
    )
    if json_:
        print_json({"version": info["version"], "importance": importance, "chart": str(path)})
        return
    metric = importance.get("baseline", {}).get("metric", "quality")
    for key, limit in (("sensors", None), ("features", top)):
        table = Table(title=f"{info['version']}: importance per {key[:-1]} (drop in {metric})")
        table.add_column(key[:-1])
        table.add_column("importance", justify="right")
        for name, value in list(importance[key].items())[:limit]:
            table.add_row(name, f"{value:.4f}")
        console.print(table)
    console.print(f"chart: {path}")


@app.command()
def evaluate(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Labelled CSV/Parquet recordings (pooled).")],
    train_rows: Annotated[int | None, typer.Option(min=1, help="Fit on the first N rows of each file.")] = None,
    train_file: Annotated[Path | None, typer.Option(help="Fit on this anomaly-free recording.")] = None,
    detector: Annotated[
        str,
        typer.Option(
            help=(
                "Fitted by --train-rows/--train-file: auto (picked from the training rows, says why), a device-level "
                "pca, dpca, mcd, iforest or univariate, or a per-reading reading:robust_z|isolation_forest|mahalanobis."
            )
        ),
    ] = "auto",
    target_far: Annotated[
        float, typer.Option(help="False-alarm rate the threshold is set to on held-back training rows (0.01 = 1 %).")
    ] = 0.01,
    min_run: Annotated[int, typer.Option(min=1, help="Alerts: consecutive flagged rows that raise one.")] = 1,
    quiet: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=(
                "Alerts: consecutive unflagged rows that close one (default: processing.episode_quiet_s of event time, "
                "as the stream job's episodes)."
            ),
        ),
    ] = None,
    per_sensor: Annotated[bool, typer.Option(help="--output: add each sensor's contribution per row.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Write one row per scored row: time, score, flag, alert, top sensors (CSV/Parquet)."),
    ] = None,
    time_column: TimeColumn = None,
    label_column: LabelColumn = None,
    sep: Sep = None,
    layout: LayoutOpt = "auto",
    sensor_column: SensorCol = None,
    value_column: ValueCol = None,
    type_column: TypeCol = None,
    ignore_column: Ignore = None,
    types: TypesFile = None,
    json_: Json = False,
) -> None:
    """Precision, recall, F1, false- and missed-alarm rates (and recall per kind) of the detector on FILES."""
    from millrace.ml.evaluate import evaluate as run

    opts = _read_opts(
        sep, time_column, label_column, layout, sensor_column, value_column, type_column, ignore_column, types
    )
    from millrace.ml.device_eval import AlertRule

    settings = settings_of(ctx)
    rule = AlertRule(min_run, quiet, settings.processing.episode_quiet_s)
    result = run(
        settings,
        files,
        opts=opts,
        train_rows=train_rows,
        train_file=train_file,
        detector=detector,
        output=output,
        target_far=target_far,
        alerts=rule,
        per_sensor=per_sensor,
    )
    if json_:
        print_json(result)
        return
    unit = "rows" if result.get("unit") == "device row" else "readings"
    console.print(f"[bold]{result['mode']}[/]: {result['readings']:,} {unit}, {result['anomalies']:,} anomalous")
    if "model" in result:
        model = result["model"]
        console.print(
            f"[dim]{model['detector']}: {model['why']}; threshold at {model['target_far']:.2%} "
            f"false alarms on {model['held_back_rows']:,} held-back rows[/]"
        )
    table = Table()
    for col in ("precision", "recall", "F1", "false alarms", "missed alarms"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{result['precision']:.3f}",
        f"{result['recall']:.3f}",
        f"{result['f1']:.3f}",
        f"{result['false_alarm_rate']:.2%}",
        f"{result['missed_alarm_rate']:.2%}",
    )
    console.print(table)
    if "per_kind" in result:
        kinds = Table(title="per kind")
        for col in ("kind", "readings", "recall", "kind F1"):
            kinds.add_column(col, justify="left" if col == "kind" else "right")
        for kind, row in result["per_kind"].items():
            kinds.add_row(kind, str(row["readings"]), f"{row['recall']:.3f}", f"{row.get('kind_f1', 0):.3f}")
        console.print(kinds)
    if "events" in result:
        _print_events(result)
    if output is not None:
        console.print(f"scores: {output}")


def _print_events(result: dict[str, Any]) -> None:
    ev = result["events"]
    table = Table(title="events (label runs) and alerts")
    for col in ("events", "detected", "alerts", "false alerts", "false alerts/day", "mean delay"):
        table.add_column(col, justify="right")
    per_day = ev["false_alerts_per_day"]
    delay = ev["detection_delay_mean_s"]
    table.add_row(
        str(ev["events"]),
        str(ev["events_detected"]),
        str(ev["alerts"]),
        str(ev["false_alerts"]),
        "-" if per_day is None else f"{per_day:.2f}",
        "-" if delay is None else f"{delay:.0f} s ({ev['detection_delay_mean_rows']:.1f} rows)",
    )
    console.print(table)
    if result.get("nab"):
        nab = Table(title="NAB score (100 = perfect, 0 = no detections)")
        for col in ("profile", "score", "TP", "FP", "FN"):
            nab.add_column(col, justify="left" if col == "profile" else "right")
        for profile, row in result["nab"].items():
            score = "-" if row["score"] is None else f"{row['score']:.1f}"
            nab.add_row(profile, score, str(row["tp"]), str(row["fp"]), str(row["fn"]))
        console.print(nab)
