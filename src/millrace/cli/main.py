"""The root ``millrace`` command: builds the settings once, sets up logging, turns errors into one line."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from confluent_kafka import KafkaException
from rich.logging import RichHandler
from rich.markup import escape
from typer._click.exceptions import ClickException as TyperClickException
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as TyperUsageError

from millrace import __version__
from millrace.cli import signals
from millrace.cli.common import AppState, err_console
from millrace.errors import MillraceError, UsageError
from millrace.kafka.admin import kafka_error

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

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
    "acl": "millrace.cli.acl",
    "iot": "millrace.cli.iot",
    "ml": "millrace.cli.ml",
    "token": "millrace.cli.token",
    "mirror": "millrace.cli.mirror",
    "shop": "millrace.cli.shop",
    "monitoring": "millrace.cli.monitoring",
}
COMMANDS = {  # name -> (module, function, group or None for the root)
    "setup": ("millrace.cli.setup", "setup", None),
    "demo": ("millrace.cli.demo", "demo", None),
    "serve": ("millrace.cli.serve", "serve", None),
    "audit": ("millrace.cli.audit", "audit", None),
    "mqtt-bridge": ("millrace.cli.iot_mqtt", "mqtt_bridge", "iot"),
    "process": ("millrace.cli.iot_process", "process", "iot"),
    "create": ("millrace.cli.token", "create", "token"),
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
        if log_level.upper() not in LOG_LEVELS:
            raise UsageError(f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}", param_hint="--log-level")
        overrides["log_level"] = log_level.upper()
    logging.basicConfig(  # the settings' log_level applies once they are built (AppState.settings)
        level=log_level.upper() if log_level else "INFO",
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    ctx.obj = AppState(config_path=config, overrides=overrides)


_register()


def _error(message: str) -> None:
    # escaped: messages quote names like "Temp [K]" that are not markup; one line, however long
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _usage_line(exc: click.UsageError | TyperUsageError) -> str:
    """Click's usage error as one line: its message and where to find help (no usage block)."""
    message = exc.format_message().replace("\n", " ").strip()
    if exc.ctx is not None:
        message += f" (see `{exc.ctx.command_path} --help`)"
    return message


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code (docs/cli.md):
    0 success, 1 runtime failure, 2 usage or configuration error, 128 + N interrupted by signal N (a
    long-running command that stopped cleanly on a signal returns 0 here; :func:`main` makes it 128 + N)."""
    try:
        result = app(args=argv, prog_name="millrace", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # a group without a command: its help
        exc.show()
        return exc.exit_code
    except (click.UsageError, TyperUsageError) as exc:  # typer vendors its own click
        _error(_usage_line(exc))
        return 2
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("[red]aborted[/]")
        return 130
    except (click.ClickException, TyperClickException) as exc:
        exc.show()
        return exc.exit_code
    except MillraceError as exc:
        _error(str(exc))
        return exc.exit_code
    except KafkaException as exc:  # a Kafka call outside the translated ones: still one line
        error = kafka_error(exc, "the Kafka operation")
        _error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except signals.Terminated as exc:
        return 128 + exc.signum
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    previous = signals.install_default()
    try:
        code = run(argv)
    finally:
        signals.restore(previous)
    if code == 0 and signals.received:  # stopped cleanly, but on request: say so in the status
        code = 128 + signals.received[0]
    sys.exit(code)


if __name__ == "__main__":
    main()
