"""The error types millrace raises. The CLI turns any MillraceError into one red line and its ``exit_code``
(1 unless the type says otherwise)."""

from __future__ import annotations


class MillraceError(Exception):
    """An error the user can act on; its message says what happened and what to do."""

    exit_code = 1


class ConfigError(MillraceError):
    """A setting is invalid. The message names the key (exit code 2 in the CLI)."""

    exit_code = 2


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


class TypeMappingError(DataError):
    """A sensor type mapping file cannot be used; the message names the file (exit code 2 in the CLI, like an
    invalid setting)."""

    exit_code = 2


def missing_extra(package: str, extra: str) -> MillraceError:
    """The error for an optional dependency that is not installed."""
    return MillraceError(f"{package} is not installed: run `pip install 'millrace[{extra}]'`")
