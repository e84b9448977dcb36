"""One way to build and connect a paho-mqtt 2.x client from ``MqttSettings`` (auth, TLS, sessions).

Every millrace MQTT client (bridge, command relay, simulator sink, tests) uses the network loop thread of
paho, and MQTT 5 unless asked for 3.1.1 (the bridge, for speed). :class:`Connection` waits for the first
CONNACK with a deadline and keeps the state that callbacks need (connected or not, and a generation number
bumped on every successful (re)connect).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from millrace.config import MqttSettings
from millrace.errors import MillraceError, missing_extra

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

# A persistent session lives this long on the broker while its client is away (MQTT 5 session expiry).
SESSION_EXPIRY_S = 7 * 86_400


def paho() -> Any:
    """The paho.mqtt.client module, or the `pip install` to run."""
    try:
        import paho.mqtt.client as client_module
    except ImportError as exc:
        raise missing_extra("paho-mqtt", "mqtt") from exc
    return client_module


class Connection:
    """A paho client configured from settings, connected by :meth:`open` and torn down by :meth:`close`.

    ``persistent=True`` keeps the broker-side session (subscriptions and unacknowledged QoS 1 messages)
    across disconnects and restarts of this client: a fixed client id, and clean start off with a session
    expiry (MQTT 5) or clean session off (MQTT 3.1.1).
    ``on_connect_hooks`` run in paho's network thread after each successful (re)connect.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        persistent: bool = False,
        manual_ack: bool = False,
        max_inflight: int = 1000,
        max_queued: int = 0,
        mqtt5: bool = True,
        state_lock: threading.Lock | None = None,
    ) -> None:
        module = paho()
        self.mqtt5 = mqtt5
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self.generation = 0
        self.connected = threading.Event()
        # Held while ``generation`` and ``connected`` change: a caller that checks them and acts (the bridge
        # acknowledging a message) under the same lock never acts on a connection that is already gone.
        self.state_lock = state_lock or threading.Lock()
        self._first = threading.Event()
        self._refused: str | None = None
        self._closing = False
        self.on_connect_hooks: list[Any] = []
        client: mqtt.Client = module.Client(
            module.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=module.MQTTv5 if mqtt5 else module.MQTTv311,
            clean_session=None if mqtt5 else not persistent,
            manual_ack=manual_ack,
        )
        client.max_inflight_messages_set(max_inflight)
        if max_queued:
            client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        if settings.username:
            password = settings.password.get_secret_value() if settings.password is not None else None
            client.username_pw_set(settings.username, password)
        if settings.tls_cafile or settings.tls_certfile:
            client.tls_set(
                ca_certs=str(settings.tls_cafile) if settings.tls_cafile else None,
                certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
                keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.warning("MQTT broker %s refused %s: %s", self.address, self.client_id, reason)
            self._first.set()
            return
        with self.state_lock:
            self.generation += 1
            self.connected.set()
        log.info(
            "connected to MQTT %s as %s (session present: %s)",
            self.address,
            self.client_id,
            flags.session_present,
        )
        for hook in self.on_connect_hooks:
            hook(flags.session_present)
        self._first.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self.state_lock:
            self.connected.clear()
        if not self._closing:
            log.warning("MQTT connection to %s lost (%s); reconnecting", self.address, reason)

    def open(self, timeout_s: float = 15.0) -> None:
        """Connect (in paho's network thread, which also reconnects later); wait for the first CONNACK."""
        module = paho()
        options: dict[str, Any] = {}
        if self.mqtt5:
            options["clean_start"] = module.MQTT_CLEAN_START_FIRST_ONLY
            if self.persistent:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = SESSION_EXPIRY_S
                options.update(clean_start=False, properties=properties)
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=30, **options)
        self.client.loop_start()
        if not self._first.wait(timeout_s) or self._refused is not None:
            why = (
                f"refused the connection: {self._refused}"
                if self._refused
                else (f"did not answer within {timeout_s:.0f} s")
            )
            self.close(timeout_s=1.0)
            raise MillraceError(
                f"MQTT broker {self.address} {why} (check mqtt.host/mqtt.port, credentials and TLS settings; "
                f"`millrace stack up --with mqtt` starts a local one)"
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Send DISCONNECT after everything already queued (e.g. PUBACKs), then stop the network thread."""
        self._closing = True
        if self.connected.is_set():
            done = threading.Event()
            previous = self.client.on_disconnect

            def on_disconnect(*args: Any) -> None:
                if previous is not None:
                    previous(*args)
                done.set()

            self.client.on_disconnect = on_disconnect
            self.client.disconnect()
            done.wait(timeout_s)
        else:
            self.client.disconnect()
        self.client.loop_stop()
