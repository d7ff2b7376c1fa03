"""The broker ACL that docs/FLEET.md gives (deploy/mosquitto/bin-daemon.acl), on a real
Mosquitto with passwords: a bin writes only its own topics and reads only its own and the
fleet's roll-out; only the fleet owner publishes roll-outs; then the daemon itself, logged in
as its bin, publishes its events and receives its roll-out under that ACL."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest_mqtt import wait_until
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
ACL = REPO / "deploy" / "mosquitto" / "bin-daemon.acl"
USERS = {"canteen-1": "pw-canteen", "yard-2": "pw-yard", "fleet-owner": "pw-owner"}


@pytest.fixture
def acl_broker(broker_factory, tmp_path):
    """Mosquitto with allow_anonymous false, a password file and the documented ACL file."""
    passwd_tool = shutil.which("mosquitto_passwd")
    assert passwd_tool, "mosquitto_passwd (Debian package mosquitto) is missing"
    broker = broker_factory(start=False)
    passwd = tmp_path / "passwd"
    for n, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run([passwd_tool, *create, "-b", str(passwd), user, password], check=True)
    passwd.chmod(0o600)
    conf = broker.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    broker.conf.write_text(conf + f"password_file {passwd}\nacl_file {ACL}\n")
    return broker.start()


class Client:
    """A logged-in client that subscribes to ``topics`` and collects what it is sent."""

    def __init__(self, port: int, user: str, topics: list[str]) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4()}")
        self.client.username_pw_set(user, USERS[user])
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics] or "x/none")
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), f"{user} could not connect and subscribe"

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload))

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _ in self.received]

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_bin_writes_only_its_own_topics_and_cannot_roll_out(acl_broker) -> None:
    owner = Client(acl_broker.port, "fleet-owner", ["smartbin/#"])
    yard = Client(acl_broker.port, "yard-2", [])
    denied = [
        "smartbin/all/model",  # a fleet-wide roll-out
        "smartbin/yard-2/model",  # a roll-out to itself
        "smartbin/canteen-1/model",  # ... or to another bin
        "smartbin/canteen-1/events",  # speaking for another bin
        "smartbin/canteen-1/status",
    ]
    for topic in denied:
        yard.publish(topic, "x")
    allowed = [f"smartbin/yard-2/{t}" for t in ("status", "events", "metrics", "status/model")]
    for topic in allowed:
        yard.publish(topic, "x")
    # One publisher's messages reach a subscriber in order: once the last allowed one is
    # there, any denied one that had got through would be there too.
    wait_until(lambda: allowed[-1] in owner.topics(), 10, "the bin's own messages")
    assert owner.topics() == allowed
    yard.close()
    owner.close()


def test_only_the_owner_rolls_out_and_each_bin_reads_its_own_and_the_fleets(acl_broker) -> None:
    canteen = Client(acl_broker.port, "canteen-1", ["smartbin/#"])
    yard = Client(acl_broker.port, "yard-2", ["smartbin/#"])
    owner = Client(acl_broker.port, "fleet-owner", [])
    for topic in ("smartbin/canteen-1/model", "smartbin/yard-2/model", "smartbin/all/model"):
        owner.publish(topic, json.dumps({"url": "https://example.org/m.tflite"}))
    canteen.publish("smartbin/canteen-1/events", "{}")  # not readable by the other bin
    wait_until(lambda: "smartbin/all/model" in canteen.topics(), 10, "canteen's roll-outs")
    wait_until(lambda: "smartbin/all/model" in yard.topics(), 10, "yard's roll-outs")
    assert canteen.topics() == ["smartbin/canteen-1/model", "smartbin/all/model"]
    assert yard.topics() == ["smartbin/yard-2/model", "smartbin/all/model"]
    for client in (canteen, yard, owner):
        client.close()


def test_the_daemon_runs_under_the_acl_as_its_bin(acl_broker, tmp_path, monkeypatch) -> None:
    """The daemon logs in as canteen-1: its status, events and metrics get through, and it
    receives (and reports on) a roll-out the owner publishes."""
    from test_telemetry_rollout import REPORT, Running, items, store_config

    from bin_daemon.config import load_config

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("BIN_DAEMON_MQTT_PASSWORD", USERS["canteen-1"])
    config, _store = store_config(tmp_path, acl_broker.port)
    text = config.read_text().replace("bin_id: test-bin", "bin_id: canteen-1, username: canteen-1")
    config.write_text(text)
    assert load_config(config).telemetry.mqtt.username == "canteen-1"
    owner = Client(acl_broker.port, "fleet-owner", ["smartbin/#"])
    samples = REPO / "tests" / "data" / "samples"
    with Running(config, samples) as service:
        wait_until(lambda: items(service) >= 2, 20, "two items sorted")
        wait_until(lambda: "smartbin/canteen-1/events" in owner.topics(), 10, "events")
        owner.publish("smartbin/canteen-1/model", json.dumps({"url": "/x", "sha256": "0" * 64}))
        status_model = REPORT.replace("test-bin", "canteen-1")
        wait_until(lambda: status_model in owner.topics(), 15, "the roll-out's report")
    seen = set(owner.topics())
    assert {"smartbin/canteen-1/status", "smartbin/canteen-1/metrics"} <= seen
    owner.close()
