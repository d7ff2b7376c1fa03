"""The MQTT client: the only module that imports paho-mqtt (>= 2.0, callback API 2).

A thin adapter: paho's network loop runs in its own thread (``loop_start``), reconnects by
itself with a growing back-off, and keeps QoS 1 messages that were sent but not yet
acknowledged, sending them again after a reconnect. The callbacks given here run on that
thread and must return quickly: they hand their news to the telemetry thread.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str = ""
    """Empty: a random one (watchers). A bin uses ``bin-daemon-<bin_id>``."""
    keepalive_s: int = 30
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    max_inflight: int = 20


def _nothing(*_: Any) -> None:
    return None


class MqttLink:
    def __init__(
        self,
        settings: BrokerSettings,
        *,
        will: tuple[str, str] | None = None,
        on_connect: Callable[[], None] = _nothing,
        on_refused: Callable[[str], None] = _nothing,
        on_disconnect: Callable[[str], None] = _nothing,
        on_connect_fail: Callable[[], None] = _nothing,
        on_publish: Callable[[int], None] = _nothing,
        on_message: Callable[[str, bytes], None] = _nothing,
    ) -> None:
        self.settings = settings
        client_id = settings.client_id or f"bin-daemon-watch-{uuid.uuid4().hex[:8]}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.max_inflight_messages_set(settings.max_inflight)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            ca = str(settings.ca_file) if settings.ca_file else None
            client.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)

        def connected(_c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                on_refused(str(reason))
            else:
                on_connect()

        def disconnected(_c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
            on_disconnect(str(reason))

        client.on_connect = connected
        client.on_disconnect = disconnected
        client.on_connect_fail = lambda _c, _u: on_connect_fail()
        client.on_publish = lambda _c, _u, mid, _r, _p: on_publish(mid)
        client.on_message = lambda _c, _u, message: on_message(message.topic, message.payload)
        self._client = client

    def start(self) -> None:
        """Connect in the background (a broker that is down is retried, never waited for)."""
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s
        )
        self._client.loop_start()

    def is_connected(self) -> bool:
        return self._client.is_connected()

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
                ) -> int | None:  # fmt: skip
        """Queue a message; its message id (``on_publish`` gets it once acknowledged), or
        None if the client refused it. Sent at once when connected, else after a reconnect."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.debug("publish to %s refused: %s", topic, paho.error_string(info.rc))
            return None
        return info.mid

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        self._client.subscribe([(topic, qos) for topic in topics])

    def stop(self, *, offline: tuple[str, str] | None = None, timeout_s: float = 1.0) -> None:
        """Optionally publish a last retained message, then disconnect cleanly."""
        if offline is not None and self.is_connected():
            info = self._client.publish(offline[0], offline[1], qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
