"""Fill levels and the HC-SR04 trigger end to end: the daemon on fake hardware (real gpiozero
adapters on mock pins), the fake fill level set by a file (issue 16)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from conftest_models import TINY, make_model_dir
from test_service import RecordingNotifier, read_events

from bin_daemon import cli
from bin_daemon.loop.service import RunOptions, Service

FILL = "fill: {{trigger_gpio: {t}, echo_gpio: {e}, empty_distance_m: 0.8, full_distance_m: 0.1}}"


def fill_config(tmp_path: Path, *, sensor: str = "{type: ir, gpio: 17}") -> Path:
    """Every label the tiny model gives goes to 'glass', which has a fill sensor."""
    model = make_model_dir(tmp_path, TINY)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model: {{dir: {model}, unsure_threshold: 0.0}}\n"
        f"sensor: {sensor}\n"
        "bins:\n"
        "  glass:\n"
        "    labels: [cardboard, glass, metal, paper, plastic]\n"
        "    servo_gpio: 13\n"
        f"    {FILL.format(t=5, e=6)}\n"
        "  recycling: {servo_gpio: 12}\n"
        "  landfill:\n"
        "    labels: [trash]\n"
        "    servo_gpio: 18\n"
        f"    {FILL.format(t=20, e=21)}\n"
        "fallback_bin: landfill\n"
        f"spool: {{save: none, dir: {tmp_path / 'spool'}}}\n"
        f"event_log: {{path: {tmp_path / 'events.sqlite3'}}}\n"
        f"telemetry: {{prometheus: {{textfile_path: {tmp_path / 'bin.prom'}}}}}\n"
    )
    return path


def test_a_full_bin_overflows_says_why_warns_once_and_shows_in_status_and_metrics(
    tmp_path, samples_dir, caplog
):
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps({"glass": 95, "landfill": 30}))
    events = tmp_path / "events.jsonl"
    notifier = RecordingNotifier()
    options = RunOptions(fill_config(tmp_path), "fake", samples_dir, max_items=3,
                         events_path=events, fill_levels=levels)  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert Service(options, notifier=notifier, stdout=io.StringIO()).run() == 0
    records = read_events(events)
    assert len(records) == 3
    for record in records:  # each was for glass, and went to its overflow, the fallback bin
        assert record["bin"] == "landfill" and record["lid"] == "completed"
        assert record["reason"] == "label; bin 'glass' is full -> 'landfill'"
    full_lines = [r for r in caplog.records if "is full" in r.getMessage()]
    assert [r.getMessage() for r in full_lines] == [
        "bin 'glass' is full (95%, full at 90%): its items go to 'landfill' until it is emptied"
    ]  # once, not once per item
    assert full_lines[0].levelname == "WARNING"
    statuses = [m for m in notifier.messages if "STATUS=" in m]
    assert statuses[-1] == (
        "STOPPING=1\nSTATUS=full: glass 95% (items go to landfill); 3 items (0 unsure, "
        "0 errors); landfill 3; armed"
    )
    ready = next(m for m in notifier.messages if m.startswith("READY=1"))
    assert "STATUS=full: glass 95% (items go to landfill); 0 items" in ready
    text = (tmp_path / "bin.prom").read_text()
    assert 'bin_daemon_fill_percent{bin="glass"} 95.0' in text
    assert 'bin_daemon_fill_percent{bin="landfill"} 30.0' in text
    assert 'bin_daemon_bin_full{bin="glass"} 1.0' in text
    assert 'bin_daemon_bin_full{bin="landfill"} 0.0' in text
    assert "recycling" not in text.split("bin_daemon_fill_percent", 1)[1]  # no sensor: absent


def test_bins_that_are_not_full_get_their_items_and_levels_are_in_the_metrics(
    tmp_path, samples_dir
):
    events = tmp_path / "events.jsonl"
    options = RunOptions(
        fill_config(tmp_path), "fake", samples_dir, max_items=2, events_path=events
    )  # fmt: skip  (no levels file: empty bins)
    service = Service(options, stdout=io.StringIO())
    assert service.run() == 0
    assert [r["bin"] for r in read_events(events)] == ["glass", "glass"]
    assert all(r["reason"] == "label" for r in read_events(events))
    assert service.fill.levels() == {"glass": 0.0, "recycling": None, "landfill": 0.0}
    metrics = service.telemetry.metrics()
    assert metrics["fill_percent"] == {"glass": 0.0, "recycling": None, "landfill": 0.0}
    assert metrics["fill_state"] == {"glass": "ok", "landfill": "ok"}
    assert 'bin_daemon_bin_full{bin="glass"} 0.0' in (tmp_path / "bin.prom").read_text()


def test_hcsr04_trigger_end_to_end_on_fake_hardware(tmp_path, samples_dir, capsys):
    sensor = "{type: hcsr04, trigger_gpio: 23, echo_gpio: 24, trigger_distance_m: 0.15}"
    events = tmp_path / "events.jsonl"
    argv = ["run", "--config", str(fill_config(tmp_path, sensor=sensor)), "--hardware", "fake",
            "--images", str(samples_dir), "--max-items", "3", "--events", str(events)]  # fmt: skip
    assert cli.main(argv) == 0
    records = read_events(events)
    assert [Path(r["frame_source"]).name for r in records] == [
        "cardboard101.jpg",
        "cardboard104.jpg",
        "cardboard109.jpg",
    ]  # fmt: skip  (one item per image, none missed, none seen twice)
    assert all(r["lid"] == "completed" and r["error"] is None for r in records)
    err = capsys.readouterr().err
    assert "sensor" not in err.replace("fill sensor", "")  # no sensor fault on the way
    assert cli.main(["sensor", "--config", argv[2], "--hardware", "fake", "--count", "1"]) == 0
    assert "distance 0.575 m, inactive" in capsys.readouterr().out


def test_fill_levels_go_with_fake_hardware_only(tmp_path, capsys):
    argv = ["run", "--hardware", "pi", "--fill-levels", str(tmp_path / "levels.json")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "bin-daemon: error: --images, --realtime and --fill-levels go with --hardware fake\n"
    )
