"""Telemetry parts without a broker: config, password, outbox, stats, system readings,
the Prometheus textfile, roll-out messages and downloads, the metrics timer, fleet view."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import subprocess
import threading
from pathlib import Path

import pytest
from test_eventlog import event
from test_model_store import make_model

from bin_daemon.config import load_config
from bin_daemon.errors import ConfigError
from bin_daemon.hardware.fakes import FakeClock
from bin_daemon.model import signing
from bin_daemon.model.store import MODEL_FILE
from bin_daemon.records.eventlog import EventLog
from bin_daemon.telemetry import prometheus
from bin_daemon.telemetry.credentials import mqtt_password
from bin_daemon.telemetry.fleetview import FleetView
from bin_daemon.telemetry.outbox import Outbox
from bin_daemon.telemetry.rollout import RolloutError, RolloutRequest, fetch, parse_request
from bin_daemon.telemetry.runtime import Telemetry
from bin_daemon.telemetry.stats import ItemStats, percentile
from bin_daemon.telemetry.sysinfo import SystemProbe

BASE = """\
sensor: {type: ir, gpio: 17}
bins:
  landfill: {labels: [trash], servo_gpio: 18}
fallback_bin: landfill
"""


def config_error(tmp_path: Path, telemetry: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + telemetry)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).replace(str(path), "CONFIG")


# ---------------------------------------------------------------------------- config


def test_a_password_in_the_yaml_is_refused_naming_where_it_belongs(tmp_path):
    text = "telemetry:\n  mqtt:\n    host: b\n    bin_id: x\n    username: bin\n    password: hunter2\n"
    message = config_error(tmp_path, text)
    assert message.startswith("CONFIG:10: telemetry.mqtt.password: a password does not belong")
    assert "LoadCredential=mqtt_password:" in message and "BIN_DAEMON_MQTT_PASSWORD" in message
    assert "hunter2" not in message  # never echoed


def test_mqtt_keys_are_checked_like_every_other(tmp_path):
    unknown = config_error(tmp_path, "telemetry:\n  mqtt: {host: b, bin_id: x, prot: 1}\n")
    assert unknown == "CONFIG:6: telemetry.mqtt.prot: unknown key"
    assert "'all' is the fleet-wide" in config_error(
        tmp_path, "telemetry:\n  mqtt: {host: b, bin_id: all}\n"
    )
    assert "no '/', '+', '#'" in config_error(
        tmp_path, "telemetry:\n  mqtt: {host: b, bin_id: a/b}\n"
    )
    (tmp_path / "ok.yaml").write_text(
        BASE + "telemetry:\n  mqtt: {host: b, bin_id: x, tls: true}\n"
    )
    config = load_config(tmp_path / "ok.yaml")
    assert config.telemetry.mqtt is not None and config.telemetry.mqtt.broker_port() == 8883
    assert load_config(None).telemetry.mqtt is None  # off by default


def test_password_from_the_systemd_credential_then_the_environment(tmp_path):
    (tmp_path / "mqtt_password").write_text("from-credential\n")
    both = {"CREDENTIALS_DIRECTORY": str(tmp_path), "BIN_DAEMON_MQTT_PASSWORD": "from-env"}
    assert mqtt_password(both) == "from-credential"
    assert mqtt_password({"BIN_DAEMON_MQTT_PASSWORD": "from-env"}) == "from-env"
    assert mqtt_password({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None


# ---------------------------------------------------------------------------- outbox


def test_outbox_sends_in_order_within_the_window_and_marks_only_acknowledged(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    for name in "abcde":
        log.record(event(name, lid="completed"))
    outbox = Outbox(log, max_inflight=2)
    first = outbox.next_rows()
    assert [r.item_id for r in first] == ["a", "b"]
    for mid, row in enumerate(first, 1):
        outbox.sent(mid, row)
    assert outbox.next_rows() == []  # the window is full
    assert outbox.acknowledged([2, 99]) == ["b"]  # an unknown id is ignored
    assert [r.item_id for r in outbox.next_rows()] == ["c"]
    assert outbox.backlog() == 4  # a, c, d, e: sent is not delivered
    # A restart: only what was never acknowledged is sent again, oldest first.
    again = Outbox(EventLog(log.path), max_inflight=10)
    assert [r.item_id for r in again.next_rows()] == ["a", "c", "d", "e"]


def test_outbox_holds_back_the_item_in_hand_but_not_one_a_crash_left_pending(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    log.record_decision(event("crashed"))  # decided, then the daemon died: lid 'pending'
    outbox = Outbox(log, max_inflight=10)
    log.record(event("done", lid="completed"))
    log.record_decision(event("in-hand"))  # this run's item, lid still moving
    log.record(event("after", lid="completed"))
    assert [r.item_id for r in outbox.next_rows()] == ["crashed", "done"]  # order kept


# ----------------------------------------------------------------------------- stats


def test_stats_counts_rates_and_percentiles():
    stats = ItemStats()
    for n in range(1, 101):
        e = event(f"i{n}", lid="completed")
        e.latency_ms = {"total": float(n)}
        e.unsure = n % 4 == 0
        e.bin = "landfill" if e.unsure else "glass"
        stats.add(e)
    snap = stats.snapshot()
    assert snap["items"] == 100 and snap["unsure"] == 25 and snap["unsure_rate"] == 0.25
    assert snap["per_bin"] == {"glass": 75, "landfill": 25} and snap["per_label"] == {"glass": 100}
    assert snap["latency_ms"] == {"p50": 50.0, "p95": 95.0, "n": 100, "sum_all": 5050.0,
                                  "count_all": 100}  # fmt: skip
    assert percentile([], 0.5) is None and ItemStats().snapshot()["unsure_rate"] is None
    short = ItemStats(window=10)  # quantiles over the window, sum and count over every item
    for n in range(1, 101):
        e = event(f"i{n}", lid="completed")
        e.latency_ms = {"total": float(n)}
        short.add(e)
    assert short.snapshot()["latency_ms"] == {"p50": 95.0, "p95": 100.0, "n": 10,
                                              "sum_all": 5050.0, "count_all": 100}  # fmt: skip


# -------------------------------------------------------------------- system readings


def test_temperature_and_throttling_only_where_readable(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    calls = []

    def vcgencmd(command, **_):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "throttled=0x50005\n", "")

    probe = SystemProbe(thermal_path=temp, throttled_command=["vcgencmd", "get_throttled"],
                        run=vcgencmd)  # fmt: skip
    assert probe.readings() == {
        "cpu_temp_c": 48.3,
        "throttled": "0x50005",
        "throttle_flags": ["under_voltage", "throttled", "under_voltage_occurred",
                           "throttled_occurred"],
    }  # fmt: skip
    absent = SystemProbe(thermal_path=tmp_path / "none", throttled_command=["no-such-vcgencmd"])
    assert absent.readings() == {} and absent.readings() == {}
    assert absent.throttled_command is None  # a missing command is not run again


# ------------------------------------------------------------------------ prometheus


def test_prometheus_textfile_is_complete_and_replaced_atomically(tmp_path):
    metrics = {"items": 7, "per_bin": {"glass": 7}, "per_label": {'we"ird': 7}, "unsure": 1,
               "errors": 0, "latency_ms": {"p50": 4.5, "p95": 9.0}, "uptime_s": 12.5,
               "cpu_temp_c": 51.2, "throttled": "0x0", "model": "ab" * 32, "backlog": 0,
               "mqtt_connected": True}  # fmt: skip
    text = prometheus.render(metrics)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    names = {line.split("{")[0].split()[0] for line in samples}
    assert all(name.startswith("bin_daemon_") for name in names)
    for name in names:  # every series has its HELP and TYPE
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
    assert 'bin_daemon_items_by_label_total{label="we\\"ird"} 7.0' in samples
    assert 'bin_daemon_latency_milliseconds{quantile="0.95"} 9.0' in samples
    assert "bin_daemon_cpu_temperature_celsius 51.2" in samples
    assert "cpu_temperature" not in prometheus.render({"items": 1})  # absent: left out
    target = tmp_path / "bin_daemon.prom"
    target.write_text("old")
    prometheus.write_textfile(target, text)
    assert target.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == [
        "bin_daemon.prom"
    ]  # no temporary file left behind


def test_prometheus_values_are_exact_and_typed_as_prometheus_reads_them():
    from prometheus_client.parser import text_string_to_metric_families

    big = 123_456_789  # {:g} wrote 1.23457e+08: counters and uptime lost their last digits
    metrics = {"items": big, "per_bin": {"glass": big}, "uptime_s": 8_640_012.3,
               "latency_ms": {"p50": 4.5, "p95": 9.25, "n": 1000, "sum_all": 555_555.125,
                              "count_all": big},
               "fill_percent": {"glass": 93.1, "landfill": None},
               "fill_state": {"glass": "full", "landfill": "ok"}}  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(prometheus.render(metrics))}
    assert families["bin_daemon_items"].type == "counter"
    assert families["bin_daemon_items"].samples[0].value == big
    assert families["bin_daemon_items_by_bin"].samples[0].value == big
    assert families["bin_daemon_uptime_seconds"].samples[0].value == 8_640_012.3
    latency = families["bin_daemon_latency_milliseconds"]
    assert latency.type == "summary"
    assert {(s.name, s.labels.get("quantile"), s.value) for s in latency.samples} == {
        ("bin_daemon_latency_milliseconds", "0.5", 4.5),
        ("bin_daemon_latency_milliseconds", "0.95", 9.25),
        ("bin_daemon_latency_milliseconds_sum", None, 555_555.125),
        ("bin_daemon_latency_milliseconds_count", None, big),
    }
    fill = families["bin_daemon_fill_percent"]
    assert fill.type == "gauge"
    assert [(s.labels, s.value) for s in fill.samples] == [({"bin": "glass"}, 93.1)]  # no None
    full = {s.labels["bin"]: s.value for s in families["bin_daemon_bin_full"].samples}
    assert full == {"glass": 1.0, "landfill": 0.0}


def test_metrics_are_due_by_the_injected_clock_and_written_without_mqtt(tmp_path, caplog):
    config = load_config(None).telemetry.model_copy(update={"metrics_interval_s": 60})
    clock = FakeClock()
    textfile = tmp_path / "out.prom"
    telemetry = Telemetry(config, clock=clock, event_log_path=None, model_sha=lambda: "cd" * 32,
                          prometheus_path=textfile, probe=SystemProbe(thermal_path=None,
                          throttled_command=None))  # fmt: skip
    telemetry.step()  # the first at once
    assert "bin_daemon_items_total 0.0" in textfile.read_text()
    telemetry.record(event("x", lid="completed"))
    clock.advance(59)
    telemetry.step()
    assert "bin_daemon_items_total 0.0" in textfile.read_text()  # not due yet
    clock.advance(1)
    telemetry.step()
    text = textfile.read_text()
    assert "bin_daemon_items_total 1.0" in text and "bin_daemon_uptime_seconds 60.0" in text
    assert "mqtt" not in text  # no MQTT configured
    textfile.unlink()
    blocked = Telemetry(config, clock=clock, event_log_path=None, model_sha=lambda: "",
                        prometheus_path=tmp_path / "no" / "dir.prom")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            clock.advance(60)
            blocked.step()
    assert sum("cannot write the Prometheus textfile" in r.message for r in caplog.records) == 1


# -------------------------------------------------------------------------- roll-out


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"url": "/m.tflite"}', "missing sha256"),
        (b'{"sha256": "' + b"a" * 64 + b'"}', "missing url"),
        (b'{"url": "/m.tflite", "sha256": "abc"}', "64 hex digits"),
        (b'{"url": "/m.tflite", "sha256": "' + b"g" * 64 + b'"}', "64 hex digits"),
        (b'{"url": "", "sha256": "' + b"a" * 64 + b'"}', "'url' must be"),
    ],
)
def test_malformed_roll_out_messages_are_refused_with_a_reason(payload, reason):
    with pytest.raises(RolloutError, match=reason):
        parse_request(payload)


def test_roll_out_message_forms():
    assert parse_request(b"") is None  # a cleared retained message
    request = parse_request(json.dumps({"url": " /m ", "sha256": "AB" * 32}).encode(), topic="t")
    assert request == RolloutRequest(url="/m", sha256="ab" * 32, topic="t")
    with pytest.raises(RolloutError, match="unsupported URL"):
        fetch(RolloutRequest("ftp://x/m.tflite", "a" * 64), Path("/tmp"), max_bytes=100)
    with pytest.raises(RolloutError, match="a local path"):
        fetch(RolloutRequest("/m/waste_classifier.tflite", "a" * 64), Path("/tmp"), max_bytes=100)


@pytest.fixture
def http_models(tmp_path):
    folder = make_model(tmp_path / "served")
    signing.generate_key(tmp_path / "key")
    key = signing.load_private_key(tmp_path / "key")
    signing.sign_folder(folder, [MODEL_FILE, "labels.txt", "model_card.json"], key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/{MODEL_FILE}"
    server.shutdown()
    server.server_close()


def test_http_roll_out_fetches_the_model_with_its_card_and_checks_sha256_size(
    tmp_path, http_models
):
    folder, url = http_models
    sha = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    got = fetch(RolloutRequest(url, sha), tmp_path / "work", max_bytes=1 << 20)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in folder.iterdir())
    with pytest.raises(RolloutError, match="sha256 mismatch"):
        fetch(RolloutRequest(url, "0" * 64), tmp_path / "w2", max_bytes=1 << 20)
    with pytest.raises(RolloutError, match="more than the 10 bytes allowed"):
        fetch(RolloutRequest(url, sha), tmp_path / "w3", max_bytes=10)
    with pytest.raises(RolloutError, match="download failed"):
        fetch(RolloutRequest(url + ".missing", sha), tmp_path / "w4", max_bytes=1 << 20)
    (folder / "model.sig").unlink()
    with pytest.raises(RolloutError, match=r"unsigned model: .*model.sig: download failed"):
        fetch(RolloutRequest(url, sha), tmp_path / "w5", max_bytes=1 << 20)


# ------------------------------------------------------------------------ fleet view


def test_fleet_view_table_from_messages():
    view = FleetView()
    assert not view.update("other/topic", b"x")
    view.update("smartbin/b1/status", b"online")
    view.update("smartbin/b1/events", json.dumps({"label": "glass", "bin": "glass",
                "unsure": True, "ts": "2026-01-01T00:00:00.000Z", "model": "ef" * 32}).encode())  # fmt: skip
    view.update("smartbin/b1/status/model", b'{"result": "refused", "sha256": "0123456789abcdef"}')
    view.update("smartbin/b1/metrics", b"not json")  # ignored, no crash
    lines = view.render().splitlines()
    assert lines[1].split() == ["b1", "online", "1", "100%", "efefefefefef", "glass", "->",
                                "glass", "2026-01-01T00:00:00.000Z", "refused", "0123456789ab"]  # fmt: skip
    assert lines[-1] == "1 bins, 1 online"


def test_a_watcher_that_joins_late_gets_the_last_item_from_the_retained_metrics():
    stats = ItemStats()
    late = event("i1", ts="2026-01-01T10:00:00.000Z", lid="completed")
    late.label, late.bin = "metal", "recycling"
    stats.add(late)
    view = FleetView()
    view.update("smartbin/b2/metrics", json.dumps(stats.snapshot()).encode())
    row = view.render().splitlines()[1]
    assert "metal -> recycling" in row
    assert "2026-01-01T10:00:00.000Z" in row
