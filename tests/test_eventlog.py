"""The event log: durable, one row per item, readable with `bin-daemon events`."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from datetime import UTC, datetime

import pytest
from test_service import read_events, tiny_config

from bin_daemon import cli
from bin_daemon.errors import BinDaemonError
from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.records.eventlog import EventLog, parse_since
from bin_daemon.records.eventlog import read_events as read_log
from bin_daemon.records.events import SortEvent


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


def event(item_id: str, ts: str = "2026-01-01T00:00:00.000Z", lid: str = "pending") -> SortEvent:
    return SortEvent(item_id, ts, "glass", 0.9, [], "glass", False, "ab" * 32, "x.jpg",
                     {"capture": 1, "classify": 2, "total": 3}, lid=lid)  # fmt: skip


def rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT item_id, lid, published_at FROM events ORDER BY id").fetchall()


def test_decision_then_outcome_is_one_row_and_a_replay_cannot_duplicate(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    first = event("a")
    log.record_decision(first)
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsynced
    assert rows(log.path) == [("a", "pending", None)]
    first.lid = "completed"
    log.record(first)
    log.record(first)  # replayed
    log.record_decision(event("b"))
    assert rows(log.path) == [("a", "completed", None), ("b", "pending", None)]
    assert log._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.close()
    # the records read back are exactly what `run --events` writes
    assert [r["item_id"] for r in read_log(log.path)] == ["a", "b"]
    assert next(read_log(log.path)) == json.loads(first.to_json())


def test_published_rows_are_marked_for_the_offline_queue(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    for name in "abc":
        log.record(event(name))
    log.mark_published(["a", "c"], when="2026-01-02T00:00:00.000Z")
    assert [r[2] for r in rows(log.path)] == ["2026-01-02T00:00:00.000Z", None,
                                              "2026-01-02T00:00:00.000Z"]  # fmt: skip
    unpublished = log._db.execute("SELECT item_id FROM events WHERE published_at IS NULL")
    assert [r[0] for r in unpublished] == ["b"]


def test_old_rows_are_pruned_after_keep_days(tmp_path):
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.record(event("old", ts="2000-01-01T00:00:00.000Z"))
    log.record(event("new", ts=datetime.now(UTC).isoformat()[:23] + "Z"))
    log.close()
    EventLog(path, keep_days=30).close()
    assert [r[0] for r in rows(path)] == ["new"]


def test_since_takes_iso_times_and_ages():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now=now) == "2026-11-24T10:00:00.000Z"
    assert parse_since("30m", now=now) == "2026-11-24T11:30:00.000Z"
    assert parse_since("1d", now=now) == "2026-11-23T12:00:00.000Z"
    assert parse_since("2026-11-24") == "2026-11-24T00:00:00.000Z"
    assert parse_since("2026-11-24T08:00+01:00") == "2026-11-24T07:00:00.000Z"
    with pytest.raises(ValueError, match="expected an ISO time"):
        parse_since("yesterday")
    # an age past the records' start, or past the calendar, means every record (not a crash)
    for age in ("60000d", "99999999d", "9" * 400 + "w"):
        assert parse_since(age, now=now) == "1970-01-01T00:00:00.000Z"


def test_a_failing_event_log_is_logged_and_sorting_goes_on(tmp_path, samples_dir, caplog):
    class FullDisk:
        def execute(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

        def close(self):
            pass

    options = RunOptions(tiny_config(tmp_path), "fake", samples_dir, max_items=2)
    service = Service(options, stdout=io.StringIO())
    original = EventLog.__init__

    def broken_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._db = FullDisk()

    with caplog.at_level(logging.ERROR):
        EventLog.__init__ = broken_init
        try:
            assert service.run() == 0
        finally:
            EventLog.__init__ = original
    assert service.sorter.counts.items == 2
    assert "cannot write the event log (database or disk is full)" in caplog.text


def test_an_event_log_that_cannot_be_opened_degrades_not_stops(tmp_path, samples_dir, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tiny_config(tmp_path, extra=f"event_log: {{path: {blocker / 'events.sqlite3'}}}\n")
    service = Service(RunOptions(config, "fake", samples_dir, max_items=1), stdout=io.StringIO())
    with caplog.at_level(logging.ERROR):
        assert service.run() == 0
    assert "cannot open the event log" in caplog.text
    assert service._status().startswith("degraded: event log: cannot be opened; 1 items")


def test_cli_events_lists_what_run_recorded(tmp_path, samples_dir, capsys):
    config = tiny_config(tmp_path, extra=f"event_log: {{path: {tmp_path / 'ev.sqlite3'}}}\n")
    jsonl = tmp_path / "events.jsonl"
    assert cli.main(["run", "--config", str(config), "--hardware", "fake", "--images",
                     str(samples_dir), "--max-items", "3", "--events", str(jsonl)]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["events", "--config", str(config), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed == read_events(jsonl)  # the same records as --events
    assert cli.main(["events", "--config", str(config), "--since", "1h"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("time (UTC)") and len(lines) == 4
    assert listed[0]["item_id"] in lines[1] and "completed" in lines[1]
    unsure = sum(r["unsure"] for r in listed)
    assert err.startswith(f"3 items, {unsure} unsure ({100 * unsure / 3:.0f}%) since ")
    assert cli.main(["events", "--log", str(tmp_path / "none.sqlite3")]) == 1
    assert "no event log here" in capsys.readouterr().err
    assert cli.main(["events", "--config", str(config), "--since", "soon"]) == 2


def test_item_ids_are_unique_across_runs_even_if_the_clock_repeats(tmp_path, samples_dir):
    from bin_daemon.hardware.fakes import FakeClock

    config = tiny_config(tmp_path)
    ids = []
    for _ in range(2):
        clock = FakeClock(start_time_s=1.7e9)  # the same wall time both runs (no RTC)
        service = Service(RunOptions(config, "fake", samples_dir, max_items=2), clock=clock,
                          stdout=io.StringIO())  # fmt: skip
        assert service.run() == 0
    ids = [r["item_id"] for r in read_log(tmp_path / "state" / "events.sqlite3")]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_unreadable_log_is_one_line(tmp_path):
    bad = tmp_path / "events.sqlite3"
    bad.write_text("not a database")
    with pytest.raises(BinDaemonError, match=r"events\.sqlite3: cannot"):
        list(read_log(bad))
