"""The telemetry thread: events from the outbox, status, metrics, the Prometheus textfile.

Threads and what they touch:

* the sorting loop calls :meth:`Telemetry.record` per item (after the event log has it):
  counts it and wakes the telemetry thread. Never blocks on the network.
* paho's network thread runs the MQTT callbacks: they set flags, queue acknowledged
  message ids, and wake the telemetry thread.
* the telemetry thread (:meth:`step`) owns its own connection to the event log: it hands
  unpublished rows to the client in order (at most ``max_inflight`` unacknowledged), marks
  acknowledged ones published, and publishes metrics and writes the textfile when due.

Journal lines: one warning when the broker becomes unreachable (not per item), a warning
when the backlog passes 100, 1,000, 10,000 ... events, and one info line per (re)connection
once its backlog is delivered.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bin_daemon.config import MqttConfig, TelemetryConfig
from bin_daemon.errors import BinDaemonError
from bin_daemon.hardware.ports import Clock
from bin_daemon.records.eventlog import EventLog
from bin_daemon.records.events import SortEvent, iso_utc
from bin_daemon.telemetry import prometheus
from bin_daemon.telemetry.credentials import mqtt_password
from bin_daemon.telemetry.outbox import Outbox
from bin_daemon.telemetry.stats import ItemStats
from bin_daemon.telemetry.sysinfo import SystemProbe
from bin_daemon.telemetry.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

WAKE_EVERY_S = 0.5
"""The telemetry thread looks at the clock at least this often (metrics due, new rows)."""
BACKLOG_WARN_FIRST = 100


class Telemetry:
    def __init__(
        self,
        config: TelemetryConfig,
        *,
        clock: Clock,
        event_log_path: Path | None,
        model_sha: Callable[[], str],
        prometheus_path: Path | None = None,
        probe: SystemProbe | None = None,
        link_factory: Callable[..., Any] | None = None,
        on_model_message: Callable[[str, bytes], None] | None = None,
        fill: Any = None,
    ) -> None:
        self.config = config
        self.mqtt: MqttConfig | None = config.mqtt
        self.topics = Topics(self.mqtt.bin_id) if self.mqtt else None
        self.clock = clock
        self.stats = ItemStats()
        self.probe = probe or SystemProbe()
        self.prometheus_path = prometheus_path
        self._model_sha = model_sha
        self._event_log_path = event_log_path
        self._on_model_message = on_model_message
        self.fill = fill
        """A FillMonitor (levels(), states()), or None when no bin has a fill sensor."""
        self._started = clock.monotonic()
        self._next_metrics = self._started  # the first metrics at once
        self._wake = threading.Event()
        self._stopping = threading.Event()
        """Set by stop(): deliver what is left (for up to drain_s)."""
        self._exit = threading.Event()
        self._drained = threading.Event()
        self._textfile_warned = False
        self._acks: collections.deque[int] = collections.deque()
        self._connected = False
        self._connect_report: int | None = None
        """Backlog when the link came up; logged once it is delivered."""
        self._published_since_connect = 0
        self._down_warned = False
        self._backlog_warn_at = BACKLOG_WARN_FIRST
        self._fault: str | None = None
        self._last_model_report: dict[str, Any] | None = None
        self.outbox: Outbox | None = None
        self.link: Any = None
        self._link_factory = link_factory
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    # -- the service's side ------------------------------------------------------------

    def start(self) -> None:
        if self.mqtt is not None:
            self._start_mqtt(self.mqtt)
        self._thread.start()

    def _start_mqtt(self, mqtt: MqttConfig) -> None:
        assert self.topics is not None
        if self._event_log_path is None:
            log.error("MQTT: no event log, so item events are not published (status is)")
        else:
            self.outbox = Outbox(EventLog(self._event_log_path), max_inflight=mqtt.max_inflight)
            backlog = self.outbox.backlog()
            if backlog:
                log.info("MQTT: %d events from earlier runs wait to be published", backlog)
        factory = self._link_factory
        if factory is None:
            from bin_daemon.telemetry.mqtt import BrokerSettings, MqttLink

            def factory(**kwargs: Any) -> Any:
                settings = BrokerSettings(
                    host=mqtt.host,
                    port=mqtt.broker_port(),
                    client_id=f"bin-daemon-{mqtt.bin_id}",
                    keepalive_s=mqtt.keepalive_s,
                    tls=mqtt.tls,
                    ca_file=mqtt.ca_file,
                    username=mqtt.username,
                    password=mqtt_password() if mqtt.username is not None else None,
                    max_inflight=mqtt.max_inflight,
                )
                return MqttLink(settings, **kwargs)

        self.link = factory(
            will=(self.topics.status, OFFLINE),
            on_connect=self._on_connect,
            on_refused=self._on_refused,
            on_disconnect=self._on_disconnect,
            on_connect_fail=self._on_connect_fail,
            on_publish=self._on_publish,
            on_message=self._on_message,
        )
        self.link.start()

    def record(self, event: SortEvent) -> None:
        """An event sink, after the event log: count the item, wake the thread."""
        self.stats.add(event)
        self._wake.set()

    __call__ = record

    def fault(self) -> str | None:
        """``mqtt: ...`` while the broker cannot be reached (for STATUS=degraded)."""
        return self._fault

    @property
    def connected(self) -> bool | None:
        """Whether the MQTT broker has the bin now; None without MQTT (the web console)."""
        return None if self.mqtt is None else self._connected

    def report_model(self, report: dict[str, Any]) -> None:
        """Publish a roll-out's outcome on ``status/model`` (retained); any thread."""
        report = {**report, "ts": iso_utc(time.time()), "model": self._model_sha()}
        self._last_model_report = report
        if self.link is not None and self.topics is not None:
            self.link.publish(self.topics.status_model, json.dumps(report), qos=1, retain=True)

    def stop(self) -> None:
        """Wait up to ``drain_s`` for unacknowledged events, say ``offline``, disconnect."""
        self._drained.clear()
        self._stopping.set()
        self._wake.set()
        drained = True
        if self.outbox is not None and self.mqtt is not None and self._thread.is_alive():
            drained = self._drained.wait(self.mqtt.drain_s)
        self._exit.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not drained and self.outbox is not None:
            log.warning(
                "MQTT: stopping with %d events not yet acknowledged; they stay in the "
                "event log and are sent after the next start",
                self.outbox.backlog(),
            )
        self.publish_metrics()  # the final counts
        if self.link is not None and self.topics is not None:
            self.link.stop(offline=(self.topics.status, OFFLINE))
        if self.outbox is not None:
            self.outbox.log.close()

    # -- paho's thread: note and wake ----------------------------------------------------

    def _on_connect(self) -> None:
        assert self.link is not None and self.topics is not None
        self.link.publish(self.topics.status, ONLINE, qos=1, retain=True)
        if self.mqtt is not None and self.mqtt.rollout and self._on_model_message is not None:
            self.link.subscribe([self.topics.model, self.topics.fleet_model])
        if self._last_model_report is not None:
            payload = json.dumps(self._last_model_report)
            self.link.publish(self.topics.status_model, payload, qos=1, retain=True)
        self._connected = True
        self._connect_report = -1  # filled in by the telemetry thread
        self._down_warned = False
        self._fault = None
        self._wake.set()

    def _on_refused(self, reason: str) -> None:
        self._connected = False
        self._warn_down(f"the broker refused the connection: {reason}")

    def _on_disconnect(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        if was and not self._stopping.is_set():
            self._warn_down(f"connection lost: {reason}")

    def _on_connect_fail(self) -> None:
        self._warn_down("cannot connect")

    def _warn_down(self, why: str) -> None:
        assert self.mqtt is not None
        self._fault = "mqtt: broker unreachable"
        if self._down_warned:
            return
        self._down_warned = True
        log.warning(
            "MQTT broker %s:%d: %s; sorting goes on, events stay in the event log and are "
            "sent when it is back",
            self.mqtt.host,
            self.mqtt.broker_port(),
            why,
        )

    def _on_publish(self, message_id: int) -> None:
        self._acks.append(message_id)
        self._wake.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self._on_model_message is not None:
            self._on_model_message(topic, payload)

    # -- the telemetry thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self._exit.is_set():
            self._wake.clear()
            try:
                self.step()
            except (BinDaemonError, OSError) as error:
                log.error("telemetry: %s", error)
            self._wake.wait(WAKE_EVERY_S)

    def step(self) -> None:
        """One round: acknowledgements, new events, metrics when due."""
        if self.outbox is not None:
            self._pump(self.outbox)
        if self.clock.monotonic() >= self._next_metrics:
            self._next_metrics = self.clock.monotonic() + self.config.metrics_interval_s
            self.publish_metrics()

    def _pump(self, outbox: Outbox) -> None:
        assert self.link is not None and self.topics is not None
        stopping = self._stopping.is_set()  # before reading the log: the last item is in it
        acked: list[int] = []
        while self._acks:
            acked.append(self._acks.popleft())
        self._published_since_connect += len(outbox.acknowledged(acked))
        if self._connected and self.link.is_connected():
            if self._connect_report == -1:
                self._connect_report = outbox.backlog()
                self._published_since_connect = 0
            for row in outbox.next_rows():
                message_id = self.link.publish(self.topics.events, row.event_json, qos=1)
                if message_id is None:
                    break
                outbox.sent(message_id, row)
        backlog = outbox.backlog()
        if backlog == 0 and outbox.in_flight == 0:
            if stopping:
                self._drained.set()
            self._backlog_warn_at = BACKLOG_WARN_FIRST
            if self._connect_report is not None and self._connect_report >= 0:
                assert self.mqtt is not None
                log.info(
                    "MQTT connected to %s:%d as %s; backlog of %d events published",
                    self.mqtt.host,
                    self.mqtt.broker_port(),
                    self.topics.status.rsplit("/", 1)[0],
                    self._published_since_connect,
                )
                self._connect_report = None
        if not self._connected and backlog >= self._backlog_warn_at:
            log.warning("MQTT: %d events wait for the broker in the event log", backlog)
            self._backlog_warn_at *= 10

    def metrics(self) -> dict[str, Any]:
        """The metrics snapshot (the JSON on ``metrics``, the textfile's numbers)."""
        out: dict[str, Any] = {
            "bin_id": self.mqtt.bin_id if self.mqtt else None,
            "ts": iso_utc(self.clock.time()),
            "uptime_s": round(self.clock.monotonic() - self._started, 1),
            "model": self._model_sha(),
            **self.stats.snapshot(),
            **self.probe.readings(),
        }
        if self.fill is not None:
            out["fill_percent"] = self.fill.levels()
            out["fill_state"] = self.fill.states()
        if self.mqtt is not None:
            out["mqtt_connected"] = self._connected
        if self.outbox is not None:
            out["backlog"] = self.outbox.backlog()
        return out

    def publish_metrics(self) -> dict[str, Any]:
        metrics = self.metrics()
        if self.link is not None and self.topics is not None and self._connected:
            self.link.publish(self.topics.metrics, json.dumps(metrics), qos=0, retain=True)
        self._write_metrics(metrics)
        return metrics

    def _write_metrics(self, metrics: dict[str, Any] | None = None) -> None:
        if self.prometheus_path is None:
            return
        try:
            text = prometheus.render(metrics or self.metrics())
            prometheus.write_textfile(self.prometheus_path, text)
            self._textfile_warned = False
        except BinDaemonError as error:
            if not self._textfile_warned:  # once, not every interval
                log.warning("%s", error)
            self._textfile_warned = True
