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


class _ScriptedSorter:
    """What the loop sees of a sorter: each poll returns the next of ``script`` ("item" =
    one item sorted), and notes what the fill sensor had read by then."""

    def __init__(self, script, sensor, service):
        from bin_daemon.loop.sorter import Counts

        self.script, self.sensor, self.service = list(script), sensor, service
        self.counts = Counts()
        self.seen: list[int] = []

    def poll(self):
        self.seen.append(self.sensor.seq)
        if not self.script:
            self.service.stop.set()
            return None
        return object() if self.script.pop(0) == "item" else None


def test_the_loop_reads_fill_levels_between_items_only_and_never_waits(fake_clock):
    from bin_daemon.hardware.fakes import ScriptedFillSensor
    from bin_daemon.hardware.fill import FillMonitor, FillSettings

    settings = FillSettings(empty_distance_m=0.8, full_distance_m=0.1, readings=3)
    sensor = ScriptedFillSensor(distance_m=settings.distance_m(95))
    service = Service(RunOptions(hardware="fake"), clock=fake_clock, notifier=RecordingNotifier(),
                      stdout=io.StringIO())  # fmt: skip
    service.fill = FillMonitor(["glass"], {"glass": sensor}, {"glass": settings},
                               clock=fake_clock, settle_s=1.0)  # fmt: skip
    sorter = _ScriptedSorter([None, None, "item"] + [None] * 60, sensor, service)
    service.sorter = sorter
    service._loop(poll_interval_s=0.02)
    seen = sorter.seen
    assert seen[:4] == [0, 1, 2, 2]  # one reading per idle poll, none while sorting the item
    quiet = [n for n in seen[3:] if n == 2]
    assert len(quiet) >= 1.0 / 0.02 - 1  # a second of polls (the lid, the waste) unread
    assert seen[3 + len(quiet) :][:3] == [3, 4, 5]  # then a fresh measurement: the 2 dropped
    assert service.fill.levels()["glass"] == 95.0 and service.fill.full_bins() == {"glass"}
    assert sensor.rests == 2  # resting after the item and after the measurement


def test_sensor_command_reads_a_bins_fill_sensor_for_calibration(tmp_path, capsys):
    config = str(fill_config(tmp_path))
    argv = ["sensor", "--config", config, "--hardware", "fake", "--count", "1"]
    assert cli.main([*argv, "--fill", "glass"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("s  distance 0.800 m, 0% full (empty 0.80 m, full 0.10 m)\n")
    assert cli.main([*argv, "--fill", "recycling"]) == 2
    assert capsys.readouterr().err == (
        "bin-daemon: error: bin 'recycling' has no fill sensor (bins with one: glass, landfill)\n"
    )
