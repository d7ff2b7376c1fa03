"""A real Mosquitto broker for tests, on 127.0.0.1 and a free port, with its own config.

Not the system's service: each test gets its own ``mosquitto -c <generated conf>`` process,
with persistence in the test's folder (so a stop and start keeps queued messages, as a real
broker does). Without ``mosquitto`` the broker tests are skipped, except under CI (CI set),
where that is a failure: .ci/run installs it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
    None,
)


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` with short waits (network I/O) until it is true or the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        assert MOSQUITTO is not None
        self.folder = folder
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        wait_until(self._accepts, 10, f"mosquitto on port {self.port}")
        return self

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.folder / "mosquitto.log"
            raise AssertionError(
                f"mosquitto exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                f" {log.read_text() if log.exists() else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its persistence file."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class Subscriber:
    """A test client collecting messages. ``persistent``: a session the broker keeps (and
    queues QoS 1 messages for) while the client or the broker is away."""

    def __init__(self, port: int, topics: list[str], *, persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent)  # fmt: skip
        self.client.reconnect_delay_set(1, 1)
        self.topics = topics

        def on_connect(client, _u, _f, _rc, _p):
            client.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(_c, _u, _mid, _codes, _p):
            self.connected.set()

        def on_disconnect(*_):
            self.connected.clear()

        def on_message(_c, _u, message):
            entry = (message.topic, message.payload, message.retain)
            with self._lock:
                # The broker's own redelivery to this subscriber (DUP set: its PUBACK did not
                # reach the broker before it stopped) of a message already here is QoS 1 on
                # the broker's leg, not the bin publishing twice: a publisher's DUP flag is
                # never passed on to subscribers (MQTT 3.1.1, 3.3.1.1), so a bin that sent an
                # event again would still show up twice.
                if message.dup and entry in self.messages:
                    return
                self.messages.append(entry)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_disconnect = on_disconnect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "test subscriber could not subscribe"

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def events(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.payloads(topic)]

    def last(self, topic: str) -> bytes | None:
        found = self.payloads(topic)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
    """Publish one message (QoS 1) and wait until the broker has it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
