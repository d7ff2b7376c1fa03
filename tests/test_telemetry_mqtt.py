"""Fleet telemetry against a real Mosquitto broker: the daemon on fake hardware (gpiozero
mock pins) publishing its events, status and metrics; outages; restarts; the last will."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_mqtt import Subscriber, free_port, wait_until
from test_service import RecordingNotifier, tiny_config

from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.records.eventlog import read_events

BIN = "test-bin"
EVENTS = f"smartbin/{BIN}/events"
STATUS = f"smartbin/{BIN}/status"
METRICS = f"smartbin/{BIN}/metrics"


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


def mqtt_config(tmp_path: Path, port: int, *, drain_s: float = 10, extra: str = "") -> Path:
    return tiny_config(
        tmp_path,
        extra=f"telemetry:\n  metrics_interval_s: 5\n  mqtt: {{host: 127.0.0.1, port: {port}, "
        f"bin_id: {BIN}, drain_s: {drain_s}, keepalive_s: 5}}\n" + extra,
    )


def log_rows(tmp_path: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(tmp_path / "state" / "events.sqlite3") as db:
        return db.execute("SELECT item_id, published_at FROM events ORDER BY id").fetchall()


def run_service(config: Path, samples_dir: Path, items: int, notifier=None) -> Service:
    options = RunOptions(config, "fake", samples_dir, max_items=items)
    service = Service(options, notifier=notifier, stdout=io.StringIO())
    assert service.run() == 0
    return service


def test_each_event_arrives_once_in_order_and_is_marked_published(tmp_path, samples_dir, broker):
    watcher = Subscriber(broker.port, ["smartbin/#"])
    run_service(mqtt_config(tmp_path, broker.port), samples_dir, 6)
    logged = list(read_events(tmp_path / "state" / "events.sqlite3"))
    wait_until(lambda: len(watcher.payloads(EVENTS)) >= 6, what="6 events")
    received = watcher.events(EVENTS)
    assert [e["item_id"] for e in received] == [r["item_id"] for r in logged]  # once, in order
    for record in logged:
        assert record.pop("published_at")  # the log says when the broker acknowledged it
    assert received == logged  # the same record as the event log
    assert all(e["lid"] == "completed" and len(e["model"]) == 64 for e in received)
    assert all(published for _, published in log_rows(tmp_path))  # acknowledged = marked
    statuses = watcher.payloads(STATUS)
    assert statuses[0] == b"online" and statuses[-1] == b"offline"  # a clean stop says so
    metrics = watcher.events(METRICS)
    assert metrics and metrics[-1]["bin_id"] == BIN and len(metrics[-1]["model"]) == 64
    watcher.close()


def test_a_broker_outage_loses_nothing_and_duplicates_nothing(
    tmp_path, samples_dir, broker, caplog
):
    watcher = Subscriber(broker.port, [EVENTS], persistent=True)
    service: Service

    def outage():
        items = service.sorter.counts.items
        if items == 2:  # idle point: the first two acknowledged, then the broker goes away
            wait_until(lambda: all(p for _, p in log_rows(tmp_path)), what="2 acknowledged")
            broker.stop()
        elif items == 5:  # items 3-5 were sorted without a broker
            assert [p is None for _, p in log_rows(tmp_path)] == [False, False, True, True, True]
            broker.start()

    config = mqtt_config(tmp_path, broker.port)
    options = RunOptions(config, "fake", samples_dir, max_items=8)
    service = Service(options, notifier=RecordingNotifier(on_status=outage), stdout=io.StringIO())
    with caplog.at_level(logging.INFO):
        assert service.run() == 0
    logged = [item_id for item_id, _ in log_rows(tmp_path)]
    assert len(logged) == 8
    wait_until(lambda: len(watcher.payloads(EVENTS)) >= 8, what="8 events")
    assert [e["item_id"] for e in watcher.events(EVENTS)] == logged
    assert all(published for _, published in log_rows(tmp_path))
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("sorting goes on, events stay in the event log" in m for m in warnings) == 1
    infos = [r.message for r in caplog.records if "backlog of" in r.message]
    assert any("backlog of" in m and "events published" in m for m in infos), infos
    watcher.close()


def test_a_restart_does_not_resend_what_was_delivered(tmp_path, samples_dir, broker):
    watcher = Subscriber(broker.port, [EVENTS])
    config = mqtt_config(tmp_path, broker.port)
    run_service(config, samples_dir, 3)
    wait_until(lambda: len(watcher.payloads(EVENTS)) >= 3, what="3 events")
    run_service(config, samples_dir, 2)
    logged = [item_id for item_id, _ in log_rows(tmp_path)]
    wait_until(lambda: len(watcher.payloads(EVENTS)) >= 5, what="5 events")
    received = [e["item_id"] for e in watcher.events(EVENTS)]
    assert received == logged and len(set(received)) == 5
    watcher.close()


def test_a_broker_down_at_start_does_not_stop_sorting(
    tmp_path, samples_dir, broker_factory, caplog
):
    port = free_port()
    config = mqtt_config(tmp_path, port, drain_s=0.5)
    with caplog.at_level(logging.WARNING):
        service = run_service(config, samples_dir, 3)
    assert service.sorter.counts.items == 3  # sorted without a broker
    assert service._status().startswith("degraded: mqtt: broker unreachable; 3 items")
    assert [p for _, p in log_rows(tmp_path)] == [None, None, None]  # kept for later
    warnings = [r.message for r in caplog.records if "events stay in the event log" in r.message]
    assert len(warnings) == 1 and "cannot connect" in warnings[0]  # once, not per item
    # The broker comes up; the next start publishes the backlog, in order, then its own item.
    broker = broker_factory(port)
    watcher = Subscriber(broker.port, [EVENTS])
    config.write_text(config.read_text().replace("drain_s: 0.5", "drain_s: 10"))
    run_service(config, samples_dir, 1)
    logged = [item_id for item_id, _ in log_rows(tmp_path)]
    wait_until(lambda: len(watcher.payloads(EVENTS)) >= 4, what="4 events")
    assert [e["item_id"] for e in watcher.events(EVENTS)] == logged
    watcher.close()


def test_a_killed_bin_is_marked_offline_by_its_last_will(tmp_path, samples_dir, broker):
    watcher = Subscriber(broker.port, [STATUS])
    config = mqtt_config(
        tmp_path,
        broker.port,
        extra="timing: {hold_open_s: 0.05, lid_move_s: 0.01, cooldown_s: 0.05, max_open_s: 5}\n",
    )
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bin_daemon", "run", "--config", str(config), "--hardware",
         "fake", "--images", str(samples_dir), "--realtime"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: watcher.last(STATUS) == b"online", 20, "the bin online")
        daemon.send_signal(signal.SIGKILL)  # no goodbye: only the broker can say it
        daemon.wait(10)
        wait_until(lambda: watcher.last(STATUS) == b"offline", 10, "the last will")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    retained = Subscriber(broker.port, [STATUS])  # a newcomer sees the retained state
    wait_until(lambda: retained.last(STATUS) == b"offline", 5, "retained offline")
    watcher.close()
    retained.close()


def test_fleet_watch_shows_the_bins_a_broker_has_seen(tmp_path, samples_dir, broker, capsys):
    from conftest_mqtt import publish

    from bin_daemon import cli

    run_service(mqtt_config(tmp_path, broker.port), samples_dir, 3)  # a real bin, now offline
    metrics = {"items": 40, "unsure_rate": 0.125, "model": "ab" * 32}
    publish(broker.port, "smartbin/yard-2/status", "online", retain=True)  # a fake second bin
    publish(broker.port, "smartbin/yard-2/metrics", json.dumps(metrics), retain=True)
    capsys.readouterr()
    argv = ["fleet", "watch", "--broker", "127.0.0.1", "--port", str(broker.port), "--once"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["bin", "status", "items", "unsure"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["test-bin"][1:3] == ["offline", "3"]  # from its retained metrics
    assert rows["yard-2"][1:5] == ["online", "40", "12%", "abababababab"]
    assert lines[-1] == "2 bins, 1 online"
    assert cli.main(["fleet", "watch", "--broker", "127.0.0.1", "--port", str(free_port()),
                     "--once"]) == 1  # fmt: skip
    assert "cannot connect" in capsys.readouterr().err
