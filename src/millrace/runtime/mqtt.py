"""Eclipse Mosquitto (the Debian package) as a managed server: ``millrace stack up --with mqtt``.

The config is written into ``<state_dir>/mqtt/``: a plain listener on ``runtime.mqtt_port``, an optional TLS
listener (``runtime.mqtt_tls_port`` with ``runtime.mqtt_tls_certfile``/``mqtt_tls_keyfile``), and a password
file made with ``mosquitto_passwd`` when ``mqtt.username``/``mqtt.password`` are set (anonymous access is then
refused). Persistence is on, so QoS 1 messages queued for a persistent session (the MQTT bridge) survive a
restart. Readiness is a real MQTT CONNECT answered by a CONNACK, not merely an open port.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.runtime.process import ServerSpec
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

NAME = "mqtt"
# Mosquitto lives in /usr/sbin on Debian, which is not on every user's PATH.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")
# Messages queued per offline persistent client (beyond those in flight). The default of 1000 would drop
# readings while the bridge is down for more than a second or two at fleet rates.
MAX_QUEUED_MESSAGES = 1_000_000
# Outgoing QoS 1 messages in flight per MQTT 3.1.1 client (v5 clients announce their own receive maximum).
MAX_INFLIGHT_MESSAGES = 1000
AUTOSAVE_INTERVAL_S = 5  # also bounds what a SIGKILL of the broker can lose


def mosquitto_binary() -> str:
    """The mosquitto executable, or MissingToolError naming `apt-get install mosquitto`."""
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return require("mosquitto", "to run the MQTT broker (`stack up --with mqtt`)")


def mqtt_dir(settings: Settings) -> Path:
    return settings.state_dir / "mqtt"


def render_config(settings: Settings, *, password_file: Path | None) -> str:
    """The mosquitto.conf text for ``settings`` (pure; unit-tested)."""
    rt = settings.runtime
    data_dir = (mqtt_dir(settings) / "data").resolve()
    lines = [
        "# written by millrace; regenerated on every start",
        f"user {_user()}",
        "persistence true",
        f"persistence_location {data_dir}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "log_dest stderr",  # unbuffered, unlike stdout into a file
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "per_listener_settings false",
    ]
    if password_file is not None:
        lines += ["allow_anonymous false", f"password_file {password_file.resolve()}"]
    else:
        lines.append("allow_anonymous true")
    lines += ["", f"listener {rt.mqtt_port} {rt.host}"]
    if rt.mqtt_tls_port is not None:
        if rt.mqtt_tls_certfile is None or rt.mqtt_tls_keyfile is None:
            raise MillraceError(
                "runtime.mqtt_tls_port needs runtime.mqtt_tls_certfile and runtime.mqtt_tls_keyfile "
                "(the broker's certificate and private key, PEM)"
            )
        lines += [
            "",
            f"listener {rt.mqtt_tls_port} {rt.host}",
            f"certfile {rt.mqtt_tls_certfile.resolve()}",
            f"keyfile {rt.mqtt_tls_keyfile.resolve()}",
        ]
        if settings.mqtt.tls_cafile is not None:
            lines.append(f"cafile {settings.mqtt.tls_cafile.resolve()}")
    return "\n".join(lines) + "\n"


def _user() -> str:
    # Run as whoever starts it: as root, Mosquitto would otherwise switch to the `mosquitto` user and then
    # fail to write the persistence file in our state dir.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root" if os.geteuid() == 0 else "mosquitto"


def write_password_file(path: Path, username: str, password: str) -> None:
    """Create ``path`` with one user, hashed by ``mosquitto_passwd`` (never the plain password on disk)."""
    tool = shutil.which("mosquitto_passwd") or require("mosquitto_passwd", "to set the MQTT password")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    result = subprocess.run(
        [tool, "-b", "-c", str(path), username, password], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise MillraceError(f"mosquitto_passwd failed: {(result.stdout + result.stderr).strip()}")
    path.chmod(0o600)


def prepare(settings: Settings) -> Path:
    """Write the config (and password file) under ``<state_dir>/mqtt``; return the config path."""
    home = mqtt_dir(settings)
    (home / "data").mkdir(parents=True, exist_ok=True)
    password_file = None
    mqtt = settings.mqtt
    if mqtt.username and mqtt.password is not None:
        password_file = home / "passwd"
        write_password_file(password_file, mqtt.username, mqtt.password.get_secret_value())
    config = home / "mosquitto.conf"
    config.write_text(render_config(settings, password_file=password_file), encoding="utf-8")
    return config


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and keep-alive 10 s."""
    flags = 0x02
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    variable = _utf8("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def connack_probe(
    host: str, port: int, *, username: str | None = None, password: str | None = None, timeout_s: float = 1.0
) -> bool:
    """True when the broker at host:port accepts an MQTT CONNECT (CONNACK with return code 0)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(connect_packet(f"millrace-probe-{uuid.uuid4().hex[:8]}", username, password))
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            accepted = answer[0] == 0x20 and answer[3] == 0
            if accepted:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
            return accepted
    except OSError:
        return False


@register_extra(NAME)
def mqtt_spec(settings: Settings) -> ServerSpec:
    """Mosquitto as a ServerSpec; ``ProcessManager.start`` runs it (idempotently) for the CLI and tests."""
    binary = mosquitto_binary()
    config = prepare(settings)
    rt, mqtt = settings.runtime, settings.mqtt
    ports = {"mqtt": rt.mqtt_port}
    if rt.mqtt_tls_port is not None:
        ports["mqtt-tls"] = rt.mqtt_tls_port
    password = mqtt.password.get_secret_value() if mqtt.password is not None else None
    return ServerSpec(
        name=NAME,
        kind="mqtt",
        argv=[binary, "-c", str(config)],
        ports=ports,
        host=rt.host,
        ready=lambda: connack_probe(rt.host, rt.mqtt_port, username=mqtt.username, password=password),
        start_timeout_s=rt.start_timeout_s,
        stop_timeout_s=rt.stop_timeout_s,
    )
