"""``millrace iot process``: the Spark Structured Streaming job from the readings topic to the store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from millrace.cli.common import console, err_console, settings_of
from millrace.cli.signals import stopping
from millrace.errors import UsageError
from millrace.kafka.admin import require_kafka

# Stopping waits for the running micro-batch (up to 15 s, jobs.iot_stream.stop_gracefully), then the query.
GRACE_S = 45.0


def process(
    ctx: typer.Context,
    master: Annotated[str | None, typer.Option(help="Spark master (default spark.master, e.g. local[2]).")] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="Stop after this many seconds.")] = None,
    until_idle: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Stop once no input arrived for this many seconds (counted from the start when there is "
            "nothing to read).",
        ),
    ] = None,
    starting_offsets: Annotated[
        str,
        typer.Option(help="earliest or latest; only for a new checkpoint (a checkpoint resumes where it was)."),
    ] = "earliest",
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint dir (default <state_dir>/checkpoints/iot-process).")
    ] = None,
    trigger: Annotated[
        float | None,
        typer.Option(help="Micro-batch interval in seconds, > 0 (default spark.trigger_seconds)."),
    ] = None,
    max_offsets: Annotated[int | None, typer.Option(min=1, help="Max Kafka records per micro-batch.")] = None,
    topic: Annotated[str | None, typer.Option(help="Readings topic (default topics.readings).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-batch statistics.")] = False,
) -> None:
    """Validate, clean, enrich, window and score readings; write the store and the output topics.

    Exactly one row per reading, alert episode and window in the store, also after a crash and restart
    (checkpoint + idempotent upserts). Prints one line of statistics per micro-batch.
    """
    from millrace.jobs.iot_stream import default_options, run
    from millrace.jobs.writers import BatchStats

    settings = settings_of(ctx)
    if starting_offsets not in ("earliest", "latest"):
        raise UsageError(f"expected earliest or latest, got {starting_offsets!r}", param_hint="--starting-offsets")
    if trigger is not None and not trigger > 0:  # also NaN
        raise UsageError(f"expected a number of seconds > 0, got {trigger:g}", param_hint="--trigger")
    options = default_options(
        settings,
        checkpoint=checkpoint_dir,
        starting_offsets=starting_offsets,
        trigger_s=trigger,
        max_offsets_per_trigger=max_offsets,
        topic=topic,
    )
    stop = threading.Event()

    def show(stats: BatchStats) -> None:
        if quiet or (stats.input_rows == 0 and not stats.alerts):
            return
        console.print(
            f"batch {stats.batch_id:>5}  in {stats.input_rows:>7}  {stats.rows_per_s:>9,.0f} rows/s  "
            f"stored {stats.readings:>7} (+{stats.interpolated} interp.)  dead {stats.dead_letters:>4}  "
            f"dup {stats.quality.get('duplicates', 0):>4}  alerts {stats.alerts:>3}  windows {stats.windows:>4}  "
            f"{stats.duration_s:5.2f} s",
            highlight=False,
        )

    with stopping(stop, grace_s=GRACE_S, what="the stream job"):
        require_kafka(settings.kafka.client_config(), stop=stop.is_set)
        if stop.is_set():
            return
        err_console.print(
            f"processing {options.topic or settings.topics.readings} -> {settings.store.backend} store; "
            f"checkpoint {options.checkpoint}",
            highlight=False,
        )
        result = run(
            settings,
            options,
            master=master,
            duration_s=duration,
            until_idle_s=until_idle,
            on_batch=show,
            should_stop=stop.is_set,
        )
    err_console.print(
        f"done: {result.batches} micro-batches, {result.input_rows} input records in {result.elapsed_s:.1f} s"
        + (f", {result.restarts} query restarts" if result.restarts else ""),
        highlight=False,
    )
