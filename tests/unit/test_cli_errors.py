"""Every command's --help (found by walking the command tree, so new commands are covered), a table of bad
inputs per command (one line naming the option, exit 2, no traceback), Kafka errors as one line, and the
signal handling of long-running commands. Nothing here needs a server: where a command would reach Kafka it
points at a closed port, and the bad input must be refused before that."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from confluent_kafka import KafkaError, KafkaException

from millrace.cli import signals
from millrace.cli.main import app, run
from millrace.errors import KafkaUnavailable, MillraceError
from millrace.jobs.iot_stream import INITIALIZING, _idle
from millrace.kafka.admin import kafka_error, translated
from millrace.runtime.process import free_port

CLOSED = f"127.0.0.1:{free_port()}"  # nothing listens there


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli(*args: str) -> Result:
    """The command line in this process, the way ``millrace`` runs it (main.run: errors to one line)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(list(args))
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in [k for k in os.environ if k.startswith("MILLRACE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", CLOSED)
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rig.csv").write_text(
        "time,Pressure,Current\n2026-01-01T00:00:00Z,2.5,4000\n2026-01-01T00:00:01Z,2.6,4010\n", encoding="utf-8"
    )
    yield tmp_path


def command_paths() -> list[tuple[str, ...]]:
    """Every group and command under ``millrace``, from the click tree typer builds."""
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(root, ())
    return paths


PATHS = command_paths()


def test_the_walk_finds_the_commands() -> None:
    found = {" ".join(p) for p in PATHS}
    for expected in ("iot simulate", "iot replay", "iot process", "iot mqtt-bridge", "serve", "demo", "ml train"):
        assert expected in found
    assert len(PATHS) >= 20


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "millrace" for p in PATHS])
def test_help_works_even_with_a_broken_config_file(path: tuple[str, ...], workdir: Path) -> None:
    (workdir / "millrace.toml").write_text("[spark\nmaster = = 3\n", encoding="utf-8")
    result = cli(*path, "--help")
    assert result.code == 0, result.stderr
    assert "Usage" in result.stdout and result.stderr == ""


def test_the_broken_config_file_still_fails_the_command(workdir: Path) -> None:
    (workdir / "millrace.toml").write_text("[spark\n", encoding="utf-8")
    result = cli("stack", "status")
    assert result.code == 2
    assert len(result.lines) == 1 and result.lines[0].startswith("error: invalid config file millrace.toml")


# (command line, text the one line must contain: the option or argument it is about)
BAD_INPUTS: list[tuple[tuple[str, ...], str]] = [
    (("--log-level", "loud", "stack", "status"), "--log-level"),
    (("--nope", "stack", "status"), "--nope"),
    (("iot", "simulate", "--start", "yesterday"), "--start"),
    (("iot", "simulate", "--forever"), "--forever"),
    (("iot", "simulate", "--fault-rate", "gremlins=0.1"), "--fault-rate"),
    (("iot", "simulate", "--fault-rate", "malformed=2"), "--fault-rate"),
    (("iot", "simulate", "--devices", "0"), "--devices"),
    (("iot", "simulate", "--rate", "-5"), "--rate"),
    (("iot", "simulate", "--anomaly-rate", "0.9"), "--anomaly-rate"),
    (("iot", "simulate", "--workers", "2", "--via", "mqtt"), "--workers"),
    (("iot", "simulate", "--via", "pigeon"), "--via"),
    (("iot", "simulate", "--count", "ten"), "--count"),
    (("iot", "simulate", "--nope"), "--nope"),
    (("iot", "replay", "rig.csv", "--sep", ";;"), "--sep"),
    (("iot", "replay", "rig.csv", "--layout", "diagonal"), "--layout"),
    (("iot", "replay", "rig.csv", "--time-column", "when"), "--time-column"),
    (("iot", "replay", "rig.csv", "--speed", "-1"), "--speed"),
    (("iot", "replay", "missing.csv"), "missing.csv"),
    (("iot", "replay"), "Missing argument 'file'"),
    (("iot", "process", "--trigger", "-1"), "--trigger"),
    (("iot", "process", "--trigger", "0"), "--trigger"),
    (("iot", "process", "--max-offsets", "0"), "--max-offsets"),
    (("iot", "process", "--starting-offsets", "middle"), "--starting-offsets"),
    (("iot", "process", "--until-idle", "0"), "--until-idle"),
    (("iot", "process", "--duration", "-3"), "--duration"),
    (("iot", "mqtt-bridge", "--count", "0"), "--count"),
    (("iot", "mqtt-bridge", "--duration", "-1"), "--duration"),
    (("topics", "describe"), "Missing argument 'name'"),
    (("stack", "logs", "nope"), "no log for nope"),
    (("stack", "up", "--with", "kafka-ui"), "--with: unknown server kafka-ui"),
    (("stack", "up", "--brokers", "9"), "--brokers"),
    (("serve", "--port", "70000"), "--port"),
    (("serve", "--queue-size", "0"), "--queue-size"),
    (("audit", "--max-listed", "-1"), "--max-listed"),
    (("ml", "train", "--source", "file"), "--file"),
    (("ml", "train", "--source", "lake"), "--source"),
    (("ml", "train", "--detector", "pca", "--detector", "robust_z"), "--detector"),
    (("ml", "train", "--target-far", "0.9"), "--target-far"),
    (("ml", "train", "--source", "store", "--window", "0"), "--window"),
    (("ml", "evaluate", "rig.csv", "--sep", "::"), "--sep"),
    (("ml", "evaluate", "rig.csv", "--label-column", "truth"), "--label-column"),
    (("demo", "--devices", "0"), "--devices"),
]


@pytest.mark.parametrize("args,names", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_option_with_exit_2(args: tuple[str, ...], names: str) -> None:
    result = cli(*args)
    assert result.code == 2, result.stderr  # refused before reaching Kafka (that would be exit 1)
    assert len(result.lines) == 1, result.stderr
    assert result.lines[0].startswith("error: ") and names in result.lines[0], result.lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bad_input_in_a_real_process_exits_2_without_traceback(workdir: Path) -> None:
    for args in (("iot", "simulate", "--start", "yesterday"), ("iot", "replay", "rig.csv", "--sep", ";;")):
        done = subprocess.run(
            [sys.executable, "-m", "millrace.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, done.stderr
        assert [line for line in done.stderr.splitlines() if line.strip()] == [
            next(line for line in done.stderr.splitlines() if line.startswith("error: "))
        ]
        assert args[-2] in done.stderr and "Traceback" not in done.stderr


def test_a_valid_separator_spelled_as_tab_is_accepted() -> None:
    from millrace.iot.tabular import check_separator

    assert check_separator("\\t") == "\t" and check_separator("tab") == "\t" and check_separator(";") == ";"
    assert check_separator(None) is None


# --- Kafka errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,needs",
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "an ACL allowing it on the topic"),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, "an ACL allowing it on the cluster resource"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "an ACL allowing it on the consumer group"),
    ],
)
def test_authorization_failures_say_what_is_missing(code: int, needs: str) -> None:
    error = kafka_error(KafkaException(KafkaError(code)), "create topic readings")
    assert type(error) is MillraceError and error.exit_code == 1
    name = KafkaError(code).name()
    assert str(error) == (
        f"create topic readings: not authorized ({name}); the client's principal needs {needs} "
        "(see `kafka-acls` / AclCommand)"
    )


def test_unreachable_and_other_errors() -> None:
    down = kafka_error(KafkaException(KafkaError(KafkaError._TRANSPORT)), "list topics", "10.0.0.1:9092")
    assert isinstance(down, KafkaUnavailable)
    assert str(down).startswith("list topics: cannot reach Kafka at 10.0.0.1:9092 (")
    other = kafka_error(KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, "rf 3 > 1 broker"), "create topic x")
    assert str(other) == "create topic x failed: INVALID_REPLICATION_FACTOR: rf 3 > 1 broker"
    denied = r"^delete topic t: not authorized \(TOPIC_AUTHORIZATION_FAILED\)"
    with pytest.raises(MillraceError, match=denied), translated("delete topic t"):
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))


def test_a_raw_kafka_exception_reaching_the_cli_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import millrace.cli.topics as topics

    def refused(*args: object, **kwargs: object) -> list[str]:
        raise KafkaException(KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED))

    monkeypatch.setattr(topics, "list_topics", refused)
    result = cli("topics", "list")
    assert result.code == 1
    assert result.lines == [
        "error: the Kafka operation: not authorized (CLUSTER_AUTHORIZATION_FAILED); the client's principal needs "
        "an ACL allowing it on the cluster resource (see `kafka-acls` / AclCommand)"
    ]


# --- --until-idle -----------------------------------------------------------------------------------------


@dataclass
class FakeBatch:
    input_rows: int


@dataclass
class FakeWriter:
    last: FakeBatch | None
    last_input_at: float
    total_input: int = 0


WAITING = {"message": "Waiting for data to arrive", "isDataAvailable": False, "isTriggerActive": False}


@pytest.mark.parametrize(
    "writer,now,status,idle",
    [
        # a restarted job with nothing left to read: no batch at all, idle counted from the query's start
        (FakeWriter(None, last_input_at=0.0), 131.0, WAITING, True),
        (FakeWriter(None, last_input_at=0.0), 129.0, WAITING, False),
        # nothing read yet, and an empty batch ran
        (FakeWriter(FakeBatch(0), last_input_at=0.0), 131.0, WAITING, True),
        # input read, the last batch empty, quiet for long enough / not yet
        (FakeWriter(FakeBatch(0), last_input_at=150.0, total_input=9), 181.0, WAITING, True),
        (FakeWriter(FakeBatch(0), last_input_at=150.0, total_input=9), 170.0, WAITING, False),
        # the last batch had input: not idle, however long ago
        (FakeWriter(FakeBatch(5), last_input_at=0.0, total_input=5), 500.0, WAITING, False),
        # a slow start or a batch in progress is not idleness
        (FakeWriter(None, last_input_at=0.0), 500.0, {"message": INITIALIZING}, False),
        (FakeWriter(None, last_input_at=0.0), 500.0, {**WAITING, "isTriggerActive": True}, False),
        (FakeWriter(None, last_input_at=0.0), 500.0, {**WAITING, "isDataAvailable": True}, False),
    ],
)
def test_until_idle(writer: FakeWriter, now: float, status: dict[str, Any], idle: bool) -> None:
    asked: list[bool] = []

    def current() -> dict[str, Any]:
        asked.append(True)
        return status

    assert _idle(writer, now, 30.0, 100.0, current) is idle  # type: ignore[arg-type]
    if now < 130.0 and writer.last_input_at < 100.0:
        assert not asked, "the status (a JVM call) is asked only when the rest says idle"


# --- signals ------------------------------------------------------------------------------------------------


def test_sigterm_outside_a_long_running_command_raises_terminated() -> None:
    previous = signals.install_default()
    try:
        with pytest.raises(signals.Terminated) as caught:
            signal.raise_signal(signal.SIGTERM)
        assert caught.value.signum == signal.SIGTERM
    finally:
        signals.restore(previous)
    assert signal.getsignal(signal.SIGTERM) is previous[signal.SIGTERM]


def test_stopping_sets_the_event_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    signals.received.clear()
    with redirect_stderr(io.StringIO()) as err, signals.stopping(stop, grace_s=30, what="the test"):
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
    assert signals.received == [signal.SIGTERM]
    signals.received.clear()
    assert err.getvalue() == "SIGTERM: stopping the test (up to 30 s; send it again to exit at once)\n"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


STUCK = textwrap.dedent(
    """
    import sys, threading, time
    from millrace.cli import signals
    stop = threading.Event()
    with signals.stopping(stop, grace_s={grace}, what="the stuck job"):
        print("ready", flush=True)
        while True:  # ignores stop: the watchdog has to end it
            time.sleep(0.05)
    """
)


@pytest.mark.parametrize("second", [False, True], ids=["watchdog", "second signal"])
def test_a_clean_stop_that_hangs_is_cut_short(second: bool) -> None:
    grace = 60 if second else 1
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK.format(grace=grace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if second:
            time.sleep(0.3)  # not a synchronisation: two separate signals rather than one coalesced
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143
    assert took < (5 if second else 1 + 5)
    stderr = proc.stderr.read() if proc.stderr else ""
    expected = (
        "error: SIGTERM again: the stuck job exits without finishing its clean stop"
        if second
        else "error: the stuck job did not stop within 1 s after SIGTERM; exited"
    )
    assert stderr.splitlines()[-1] == expected and "Traceback" not in stderr
