"""``millrace iot process``: the Spark Structured Streaming job from the readings topic to the store."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from millrace.cli.common import console, err_console, settings_of


def process(
    ctx: typer.Context,
    master: Annotated[str | None, typer.Option(help="Spark master (default spark.master, e.g. local[2]).")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    until_idle: Annotated[
        float | None,
        typer.Option(help="Stop once no input arrived for this many seconds (after some input)."),
    ] = None,
    starting_offsets: Annotated[
        str,
        typer.Option(help="earliest or latest; only for a new checkpoint (a checkpoint resumes where it was)."),
    ] = "earliest",
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint dir (default <state_dir>/checkpoints/iot-process).")
    ] = None,
    trigger: Annotated[
        float | None, typer.Option(help="Micro-batch interval in seconds (default spark.trigger_seconds).")
    ] = None,
    max_offsets: Annotated[int | None, typer.Option(help="Max Kafka records per micro-batch.")] = None,
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
        raise typer.BadParameter("use earliest or latest", param_hint="--starting-offsets")
    options = default_options(
        settings,
        checkpoint=checkpoint_dir,
        starting_offsets=starting_offsets,
        trigger_s=trigger,
        max_offsets_per_trigger=max_offsets,
        topic=topic,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        err_console.print("[yellow]stopping after the current micro-batch...[/]")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

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
