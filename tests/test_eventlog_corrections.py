"""Corrections in the event log: both labels kept, old files upgraded, `bin-daemon events`."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bin_daemon import cli
from bin_daemon.records.eventlog import EventLog, UnknownItemError, read_events
from bin_daemon.records.events import SortEvent


def event(item_id: str, ts: str, label: str = "plastic", unsure: bool = True) -> SortEvent:
    return SortEvent(item_id, ts, label, 0.61, [], "landfill", unsure, "ab" * 32, "x.jpg",
                     {"capture": 1, "classify": 2, "total": 3}, lid="completed")  # fmt: skip


def test_a_correction_keeps_the_models_label_and_survives_an_outcome_replay(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    first = event("a", "2026-01-01T00:00:00.000Z")
    log.record(first)
    log.record(event("b", "2026-01-01T00:01:00.000Z", label="glass", unsure=False))
    log.record_correction("a", "trash")
    log.record(first)  # the same item written again (a replay): the correction stays
    records = {r["item_id"]: r for r in read_events(log.path)}
    assert records["a"]["label"] == "plastic" and records["a"]["corrected_label"] == "trash"
    assert records["a"]["corrected_at"].endswith("Z")
    assert "corrected_label" not in records["b"]
    log.record_correction("a", "paper")  # a second opinion replaces the first
    assert next(read_events(log.path))["corrected_label"] == "paper"
    assert log.corrected_labels() == ["paper"]
    log.close()


def test_correcting_an_unknown_item_raises_and_changes_nothing(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    log.record(event("a", "2026-01-01T00:00:00.000Z"))
    with pytest.raises(UnknownItemError, match="no item zzz in the event log"):
        log.record_correction("zzz", "trash")
    assert "corrected_label" not in next(read_events(log.path))
    log.close()


def test_queries_for_the_console(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    for n in range(5):
        log.record(event(f"i{n}", f"2026-01-01T00:0{n}:00.000Z", unsure=n % 2 == 0))
    assert [r["item_id"] for r in log.recent(limit=3)] == ["i4", "i3", "i2"]
    assert [r["item_id"] for r in log.recent(unsure_only=True)] == ["i4", "i2", "i0"]
    assert [r["item_id"] for r in log.recent(since="2026-01-01T00:03:00.000Z")] == ["i4", "i3"]
    assert set(log.find(["i1", "i3", "nope"])) == {"i1", "i3"}
    assert log.counts_by_bin(since="2026-01-01T00:02:00.000Z") == {"landfill": 3}
    assert log.count_unsure(since="2026-01-01T00:00:00.000Z") == 3
    log.close()


def test_a_version_1_file_gets_the_correction_columns(tmp_path):
    path = tmp_path / "events.sqlite3"
    with sqlite3.connect(path) as db:  # the schema as version 1 wrote it
        db.executescript(
            """
            CREATE TABLE events (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL UNIQUE,
              ts TEXT NOT NULL, label TEXT, confidence REAL, bin TEXT NOT NULL,
              unsure INTEGER NOT NULL, model TEXT NOT NULL, lid TEXT NOT NULL, error TEXT,
              event_json TEXT NOT NULL, recorded_at TEXT NOT NULL, published_at TEXT);
            PRAGMA user_version=1;
            """
        )
        old = event("old", "2025-12-31T00:00:00.000Z")
        db.execute(
            "INSERT INTO events (item_id, ts, label, confidence, bin, unsure, model, lid, "
            "event_json, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old", old.ts, "plastic", 0.6, "landfill", 1, "ab" * 32, "completed",
             old.to_json(), old.ts),
        )  # fmt: skip
    assert [r["item_id"] for r in read_events(path)] == ["old"]  # readable before the upgrade
    log = EventLog(path)
    log.record_correction("old", "trash")
    assert log._db.execute("PRAGMA user_version").fetchone()[0] == 2
    log.close()
    assert next(read_events(path))["corrected_label"] == "trash"


def test_the_events_command_shows_the_correction(tmp_path, capsys):
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.record(event("20260101T000000000Z-abc-0001", "2026-01-01T00:00:00.000Z"))
    log.record_correction("20260101T000000000Z-abc-0001", "trash")
    log.close()
    assert cli.main(["events", "--log", str(path)]) == 0
    assert "corrected: trash" in capsys.readouterr().out
    assert cli.main(["events", "--log", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] == "plastic" and record["corrected_label"] == "trash"
