"""Start, probe and stop local server processes, keeping pids, ports and logs in a state directory.

Every server millrace runs locally (Kafka nodes, Mosquitto, FerretDB, later Prometheus and others) is a
:class:`ServerSpec` handed to :class:`ProcessManager`. The manager is the only code that spawns or kills
them, for the CLI and for the test fixtures alike.

State layout::

    <state_dir>/run/<name>.json   pid, ports, argv, start time, log path
    <state_dir>/logs/<name>.log   stdout and stderr of the process
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from millrace.errors import PortInUseError, ServerStartError

log = logging.getLogger(__name__)

Probe = Callable[[], bool]


@dataclass(frozen=True)
class ServerSpec:
    """What to run and how to know it is ready.

    ``ports`` maps a role ("client", "controller", ...) to a port the server will bind on ``host``; they are
    checked before start so a taken port fails at once with the holder named. ``ready`` is called repeatedly
    until it returns True or ``start_timeout_s`` passes; it must not raise for "not yet".
    """

    name: str
    kind: str
    argv: Sequence[str]
    ports: Mapping[str, int]
    ready: Probe
    host: str = "127.0.0.1"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 20.0
    # SIGTERM the whole process group (a JVM wrapper and its children), or only the leader, for a process
    # that stops its own children gracefully (e.g. a Python driver finishing a Spark micro-batch).
    term_group: bool = True


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    kind: str
    pid: int
    ports: dict[str, int]
    host: str
    argv: list[str]
    started_at: float
    log_path: str
    term_group: bool = True

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid, self.started_at)

    @property
    def uptime_s(self) -> float:
        return max(0.0, time.time() - self.started_at)


def pid_alive(pid: int, started_at: float | None = None) -> bool:
    """True when ``pid`` runs and, if ``started_at`` is given, was created then (guards against pid reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_at is None or abs(proc.create_time() - started_at) < 5.0
    except psutil.Error:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ephemeral stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_probe(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_holder(port: int) -> str:
    """Who listens on ``port``, as "name (pid N)" when the OS lets us see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except psutil.Error:
        pass
    return "another process"


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ProcessManager:
    """Owns the managed processes recorded under one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def record(self, name: str) -> ProcessRecord | None:
        path = self.run_dir / f"{name}.json"
        try:
            return ProcessRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[ProcessRecord]:
        if not self.run_dir.is_dir():
            return []
        found = (self.record(p.stem) for p in sorted(self.run_dir.glob("*.json")))
        return [r for r in found if r is not None]

    def running(self, name: str) -> ProcessRecord | None:
        rec = self.record(name)
        return rec if rec is not None and rec.alive else None

    def start(self, spec: ServerSpec) -> ProcessRecord:
        """Start ``spec`` unless it already runs; return once it is ready.

        Idempotent: a live process recorded under the same name is kept as it is. Raises PortInUseError
        when a port is taken by something else, ServerStartError (with the log tail) when the process exits
        or is not ready by the deadline; a process that failed to start is stopped again.
        """
        current = self.running(spec.name)
        if current is not None and self._wait_ready(spec, current, deadline=time.monotonic() + spec.start_timeout_s):
            log.info("%s already running (pid %d)", spec.name, current.pid)
            return current
        for role, port in spec.ports.items():
            if not port_is_free(spec.host, port):
                raise PortInUseError(
                    f"{spec.name}: {role} port {spec.host}:{port} is taken by {port_holder(port)}; "
                    f"stop it or choose another port in the settings"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(spec.name)
        with log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.name}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                list(spec.argv),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=spec.cwd,
                env={**os.environ, **spec.env},
                start_new_session=True,  # own process group: stop() signals the server and its children
            )
        rec = ProcessRecord(
            name=spec.name,
            kind=spec.kind,
            pid=proc.pid,
            ports=dict(spec.ports),
            host=spec.host,
            argv=list(spec.argv),
            started_at=psutil.Process(proc.pid).create_time(),
            log_path=str(log_path),
            term_group=spec.term_group,
        )
        (self.run_dir / f"{spec.name}.json").write_text(json.dumps(rec.__dict__, indent=2), encoding="utf-8")
        if not self._wait_ready(spec, rec, deadline=time.monotonic() + spec.start_timeout_s, popen=proc):
            exited = proc.poll()
            self.stop(spec.name, timeout_s=spec.stop_timeout_s)
            why = (
                f"exited with code {exited}"
                if exited is not None
                else (f"was not ready within {spec.start_timeout_s:.0f} s")
            )
            raise ServerStartError(f"{spec.name} {why}; last lines of {log_path}:\n{tail(log_path)}")
        log.info("%s ready (pid %d, ports %s)", spec.name, rec.pid, rec.ports)
        return rec

    def _wait_ready(
        self, spec: ServerSpec, rec: ProcessRecord, *, deadline: float, popen: subprocess.Popen[bytes] | None = None
    ) -> bool:
        delay = 0.05
        while time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                return False
            if popen is None and not rec.alive:
                return False
            try:
                if spec.ready():
                    return True
            except Exception as exc:  # a probe's "not yet" may surface as any client error
                log.debug("%s probe: %s", spec.name, exc)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        return False

    def stop(self, name: str, *, timeout_s: float = 20.0) -> bool:
        """SIGTERM the process group, then SIGKILL after ``timeout_s``. True if something was stopped."""
        rec = self.record(name)
        if rec is None:
            return False
        stopped = False
        if rec.alive:
            stopped = True
            self._signal(rec.pid, signal.SIGTERM, group=rec.term_group)
            if not _wait_gone(rec.pid, timeout_s):
                log.warning("%s did not stop within %.0f s; killing it", name, timeout_s)
                self._signal(rec.pid, signal.SIGKILL)
                _wait_gone(rec.pid, 10.0)
        (self.run_dir / f"{name}.json").unlink(missing_ok=True)
        return stopped

    def kill(self, name: str) -> None:
        """SIGKILL at once (for crash tests)."""
        rec = self.record(name)
        if rec is not None and rec.alive:
            self._signal(rec.pid, signal.SIGKILL)
            _wait_gone(rec.pid, 10.0)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals, *, group: bool = True) -> None:
        try:
            if not group:
                os.kill(pid, sig)
                return
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    try:
        proc.wait(timeout=timeout_s)
        return True
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        return True
