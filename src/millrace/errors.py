"""The error types millrace raises. The CLI turns any MillraceError into one red line and its ``exit_code``
(1 unless the type says otherwise: 2 for usage and configuration errors)."""

from __future__ import annotations


class MillraceError(Exception):
    """An error the user can act on; its message says what happened and what to do."""

    exit_code = 1


class ConfigError(MillraceError):
    """A setting is invalid. The message names the key (exit code 2 in the CLI)."""

    exit_code = 2


class UsageError(MillraceError):
    """A command-line option or argument has a value that cannot be used; the message starts with the option
    (exit code 2, like click's own usage errors)."""

    exit_code = 2

    def __init__(self, message: str, param_hint: str | None = None) -> None:
        super().__init__(f"{param_hint}: {message}" if param_hint else message)
        self.param_hint = param_hint


class MissingToolError(MillraceError):
    """A system tool (Java, Maven, Mosquitto, ...) is not installed; the message says how to install it."""


class PortInUseError(MillraceError):
    """A port a managed server needs is taken by another process."""


class ServerStartError(MillraceError):
    """A managed server did not become ready before its deadline; the message carries its log tail."""


class KafkaUnavailable(MillraceError):
    """The Kafka cluster cannot be reached or refused an operation."""


class StoreUnavailable(MillraceError):
    """The store backend cannot be reached."""


class DataError(MillraceError):
    """Input data (a file, a column, a value) cannot be used; the message says where."""


class ColumnError(DataError):
    """A column named by an option (``--time-column`` ...) is not in the file, or none could be detected; the
    message names the option (exit code 2 in the CLI: the command line needs changing, not the data)."""

    exit_code = 2


class TypeMappingError(DataError):
    """A sensor type mapping file cannot be used; the message names the file (exit code 2 in the CLI, like an
    invalid setting)."""

    exit_code = 2


def missing_extra(package: str, extra: str) -> MillraceError:
    """The error for an optional dependency that is not installed."""
    return MillraceError(f"{package} is not installed: run `pip install 'millrace[{extra}]'`")
