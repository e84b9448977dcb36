"""The root ``millrace`` command: builds the settings once, sets up logging, turns errors into one line."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.logging import RichHandler
from rich.markup import escape
from typer._click.exceptions import ClickException as TyperClickException

from millrace import __version__
from millrace.cli.common import AppState, err_console
from millrace.config import load_settings
from millrace.errors import MillraceError

app = typer.Typer(
    name="millrace",
    help="millrace: real-time IoT telemetry and anomaly detection on Apache Kafka and Spark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Command groups and commands, by module. A module that is not there yet (its feature has not landed) is
# skipped; any other import error is a bug and surfaces.
GROUPS = {
    "stack": "millrace.cli.stack",
    "topics": "millrace.cli.topics",
    "iot": "millrace.cli.iot",
    "ml": "millrace.cli.ml",
}
COMMANDS = {  # name -> (module, function, group or None for the root)
    "setup": ("millrace.cli.setup", "setup", None),
    "demo": ("millrace.cli.demo", "demo", None),
    "serve": ("millrace.cli.serve", "serve", None),
    "audit": ("millrace.cli.audit", "audit", None),
    "mqtt-bridge": ("millrace.cli.iot_mqtt", "mqtt_bridge", "iot"),
    "process": ("millrace.cli.iot_process", "process", "iot"),
}


def _optional(module: str) -> object | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def _register() -> None:
    groups: dict[str, typer.Typer] = {}
    for name, module_name in GROUPS.items():
        module = _optional(module_name)
        if module is not None:
            groups[name] = module.app  # type: ignore[attr-defined]
    for name, (module_name, function, group) in COMMANDS.items():
        module = _optional(module_name)
        if module is None:
            continue
        target = app if group is None else groups.get(group)
        if target is not None:
            target.command(name)(getattr(module, function))
    for name, group_app in groups.items():
        app.add_typer(group_app, name=name)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"millrace {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings file (default: ./millrace.toml if present).")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="State dir for pids, logs and data (default .millrace).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Settings come from defaults, then the config file, then MILLRACE_* environment variables
    (nested keys joined with __, e.g. MILLRACE_KAFKA__BOOTSTRAP_SERVERS=host:9092)."""
    overrides: dict[str, object] = {}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    if log_level is not None:
        overrides["log_level"] = log_level.upper()
    settings = load_settings(config, **overrides)
    logging.basicConfig(
        level=settings.log_level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    ctx.obj = AppState(settings=settings, config_path=config)


_register()


def main() -> None:
    try:
        result = app(standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("[red]aborted[/]")
        sys.exit(130)
    except (click.ClickException, TyperClickException) as exc:  # typer vendors its own click
        exc.show()
        sys.exit(exc.exit_code)
    except MillraceError as exc:  # escaped: messages quote names like "Temp [K]" that are not markup
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
