"""The daemon end to end on fake hardware: events, sd_notify, reload, spool, logging."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest_models import TINY, make_model_dir

from bin_daemon import cli
from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.records import journal
from bin_daemon.records.events import SortEvent
from bin_daemon.records.spool import Spool

REQUIRED = {"item_id", "ts", "label", "confidence", "top", "bin", "unsure", "model",
            "frame_source", "latency_ms"}  # fmt: skip


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


def tiny_config(tmp_path: Path, extra: str = "", threshold: float = 0.0) -> Path:
    model = make_model_dir(tmp_path, TINY)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model: {{dir: {model}, unsure_threshold: {threshold}}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
        "  glass: {labels: [glass], servo_gpio: 13}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n" + extra
    )
    return path


class RecordingNotifier(journal.Notifier):
    def __init__(self, on_status=None):
        self.messages: list[str] = []
        self.on_status = on_status
        super().__init__(send=self._record)

    def _record(self, message: str) -> bool:
        self.messages.append(message)
        if message.startswith("STATUS=") and self.on_status:
            self.on_status()
        return True


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_fake_with_real_model_writes_one_event_per_item(tmp_path, samples_dir, capsys):
    events = tmp_path / "events.jsonl"
    argv = ["run", "--hardware", "fake", "--images", str(samples_dir), "--max-items", "7",
            "--events", str(events)]  # fmt: skip
    assert cli.main(argv) == 0
    records = read_events(events)
    assert len(records) == 7
    for seq, record in enumerate(records, 1):
        assert record.keys() >= REQUIRED
        latency = record["latency_ms"]
        assert set(latency) == {
            "capture", "classify", "preprocess", "decide", "total", "trigger_to_lid"
        }  # fmt: skip
        assert 0 < latency["preprocess"] < latency["classify"] <= latency["total"]
        assert latency["total"] <= latency["trigger_to_lid"]
        assert len(record["top"]) == 3 and record["lid"] == "completed"
        assert record["bin"] in ("recycling", "glass", "landfill")
        assert len(record["model"]) == 64 and record["seq"] == seq
    assert records[0]["frame_source"].endswith("cardboard/cardboard101.jpg")
    assert len({r["item_id"] for r in records}) == 7
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8 and out[0].startswith("item 1 ") and " -> " in out[0]
    assert out[-1].startswith("sorted 7 items (")


def test_sd_notify_ready_watchdog_status_stopping(tmp_path, samples_dir, monkeypatch):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(0)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        options = RunOptions(tiny_config(tmp_path), "fake", samples_dir, max_items=3)
        assert Service(options, stdout=io.StringIO()).run() == 0
        messages = []
        while True:
            try:
                messages.append(server.recv(4096).decode())
            except BlockingIOError:
                break
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert len(ready) == 1 and messages[ready[0]].startswith("READY=1\nSTATUS=0 items")
    statuses = [i for i, m in enumerate(messages) if m.startswith("STATUS=")]
    assert len(statuses) == 3 and statuses[0] > ready[0]  # one per item, after READY
    assert messages[statuses[-1]].startswith("STATUS=3 items (0 unsure, 0 errors)")
    assert "WATCHDOG=1" in messages[ready[0] :]
    assert messages[-1].startswith("STOPPING=1\nSTATUS=3 items")


def test_notify_without_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert journal.notify("READY=1") is False


def test_sighup_reload_applies_between_items(tmp_path, samples_dir):
    config = tiny_config(tmp_path, threshold=0.0)
    events = tmp_path / "events.jsonl"
    service: Service

    def after_first_item():
        if service.sorter.counts.items == 1:
            config.write_text(
                config.read_text().replace("unsure_threshold: 0.0", "unsure_threshold: 1.0")
            )
            service.reload_requested.set()  # what SIGHUP does

    notifier = RecordingNotifier(on_status=after_first_item)
    options = RunOptions(config, "fake", samples_dir, max_items=3, events_path=events)
    service = Service(options, notifier=notifier, stdout=io.StringIO())
    assert service.run() == 0
    assert [r["unsure"] for r in read_events(events)] == [False, True, True]
    assert "RELOADING=1" in notifier.messages


def test_bad_reload_keeps_the_running_config(tmp_path, samples_dir, caplog):
    config = tiny_config(tmp_path)
    service: Service

    def break_config():
        if service.sorter.counts.items == 1:
            config.write_text("sensor: [\n")
            service.reload_requested.set()

    options = RunOptions(config, "fake", samples_dir, max_items=2)
    service = Service(options, notifier=RecordingNotifier(break_config), stdout=io.StringIO())
    with caplog.at_level(logging.ERROR):
        assert service.run() == 0
    assert "reload failed, keeping the running config and model" in caplog.text
    assert service.sorter.counts.items == 2


def test_unsure_frames_are_spooled(tmp_path, samples_dir):
    config = tiny_config(tmp_path, extra=f"spool: {{dir: {tmp_path / 'spool'}, save: unsure}}\n",
                         threshold=1.0)  # fmt: skip
    options = RunOptions(config, "fake", samples_dir, max_items=2)
    assert Service(options, stdout=io.StringIO()).run() == 0
    saved = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert len(saved) == 4 and saved[0].endswith(".jpg") and saved[1].endswith(".json")
    meta = json.loads((tmp_path / "spool" / saved[1]).read_text())
    assert meta["unsure"] is True and meta.keys() >= REQUIRED


def event(item_id: str, unsure: bool = True) -> SortEvent:
    return SortEvent(item_id, "2026-01-01T00:00:00.000Z", "glass", 0.3, [], "landfill", unsure,
                     "ab" * 32, "x.jpg", {"capture": 1, "classify": 2, "total": 3})  # fmt: skip


def test_spool_quota_deletes_oldest_first(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)  # noise: ~30 KB as JPEG
    spool = Spool(tmp_path / "spool", save="all", quota_mb=0.1)
    for n in range(8):
        spool.maybe_save(event(f"2026010{n}T000000000Z-000{n}", unsure=False), frame)
    names = sorted(p.stem for p in (tmp_path / "spool").iterdir())
    total = sum(p.stat().st_size for p in (tmp_path / "spool").iterdir())
    assert total <= 0.1 * 1024 * 1024
    assert names[-1] == "20260107T000000000Z-0007"  # the newest is kept
    assert "20260100T000000000Z-0000" not in names  # the oldest went first


def test_spool_modes(tmp_path):
    frame = np.zeros((10, 10, 3), np.uint8)
    assert Spool(tmp_path / "a", save="unsure").maybe_save(event("1", unsure=False), frame) is None
    assert Spool(tmp_path / "b", save="unsure").maybe_save(event("2"), frame) is not None
    assert Spool(tmp_path / "c", save="none").maybe_save(event("3"), frame) is None
    assert not (tmp_path / "c").exists()


def test_unwritable_spool_disables_itself_and_sorting_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        spool = Spool(blocker / "spool", save="all")
    assert not spool.enabled
    assert "frames will not be saved, sorting goes on" in caplog.text
    assert spool.maybe_save(event("1"), np.zeros((4, 4, 3), np.uint8)) is None


def test_journal_record_has_structured_fields(monkeypatch):
    sent = []

    class FakeJournal:
        @staticmethod
        def send(message, **fields):
            sent.append((message, fields))

    monkeypatch.setattr(journal, "_sd_journal", FakeJournal)
    journal.ItemReporter(journal=True)(event("20260101T000000000Z-0001"))
    ((message, fields),) = sent
    assert message.startswith("item 0   glass      0.30 -> landfill    UNSURE")
    assert fields["LABEL"] == "glass" and fields["BIN"] == "landfill" and fields["UNSURE"] == 1
    assert fields["CONFIDENCE"] == "0.3000" and fields["LATENCY_MS"] == "3.0"
    assert fields["MODEL"] == "ab" * 32 and fields["SYSLOG_IDENTIFIER"] == "bin-daemon"
    assert json.loads(fields["EVENT_JSON"])["item_id"] == "20260101T000000000Z-0001"


def test_without_journal_items_are_plain_lines(capsys):
    journal.ItemReporter(journal=False)(event("1"))
    assert capsys.readouterr().out.startswith("item 0   glass      0.30 -> landfill")
    assert journal.use_journal("auto") is False  # no JOURNAL_STREAM here


def test_cli_errors_are_one_line_without_traceback(tmp_path, samples_dir, capsys):
    assert cli.main(["run", "--hardware", "fake"]) == 2
    assert capsys.readouterr().err == "bin-daemon: error: run --hardware fake needs --images DIR\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config(tmp_path).read_text().replace("servo_gpio: 13", "servo_gpio: 12"))
    assert cli.main(["run", "--config", str(bad), "--hardware", "fake", "--images",
                     str(samples_dir)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (
        err
        == f"bin-daemon: error: {bad}:5: bins.glass.servo_gpio: GPIO 12 is already used by bins.recycling.servo_gpio\n"
    )
    assert cli.main(["classify", "--model", str(tmp_path / "none"), "x.jpg"]) == 1
    assert "model folder not found" in capsys.readouterr().err


def test_cli_lid_and_sensor_on_fake_hardware(capsys):
    assert cli.main(["lid", "recycling", "open", "--hardware", "fake"]) == 0
    assert capsys.readouterr().out == (
        "lid recycling: moved to 90 deg (GPIO12, PWM duty 0.0750), then detached\n"
    )
    assert cli.main(["lid", "glass", "0", "--hardware", "fake"]) == 0
    assert "moved to 0 deg (GPIO13, PWM duty 0.0250)" in capsys.readouterr().out
    assert cli.main(["lid", "compost", "open", "--hardware", "fake"]) == 2
    assert "no bin 'compost'" in capsys.readouterr().err
    assert cli.main(["sensor", "--hardware", "fake", "--count", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["   0.00 s  inactive", "   0.50 s  inactive"]


def test_cli_classify_json_for_the_model_store(tmp_path, samples_dir, capsys):
    model = make_model_dir(tmp_path, TINY)
    image = samples_dir / "glass" / "glass1.jpg"
    assert cli.main(["classify", "--model", str(model), "--json", str(image)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == str(image) and result["label"] in {"glass", "paper", "cardboard",
                                                                  "metal", "plastic", "trash"}  # fmt: skip
    assert len(result["top"]) == 3


def test_spool_frame_path_finds_saved_frames_and_refuses_ids_that_are_not_item_ids(tmp_path):
    spool = Spool(tmp_path / "spool", save="all")
    saved_id = "20260101T120000123Z-a1b2c3-0007"
    spool.maybe_save(event(saved_id), np.zeros((8, 8, 3), np.uint8))
    assert spool.frame_path(saved_id) == tmp_path / "spool" / f"{saved_id}.jpg"
    assert spool.frame_path("20260101T120000123Z-a1b2c3-0008") is None  # not saved
    (tmp_path / "secret.jpg").write_bytes(b"x")
    for hostile in ("../secret", "../../etc/passwd", f"{saved_id}/..", "", saved_id + "\n"):
        assert spool.frame_path(hostile) is None
