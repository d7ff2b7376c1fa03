"""Signals as systemd sends them, and SIGKILL: a real process, real time (bounded waits)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_models import TINY, make_model_dir

DEADLINE_S = 30.0


def wait_for_line(proc: subprocess.Popen, needle: str, lines: list[str]) -> None:
    """Read proc's stderr until a line contains ``needle`` (no sleeping: select on the pipe)."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if not selector.select(timeout=end - time.monotonic()):
            break
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return
    raise AssertionError(f"no {needle!r} in stderr:\n{''.join(lines)}")


def write_config(tmp_path: Path, timing: str) -> Path:
    model = make_model_dir(tmp_path, TINY)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{dir: {model}, unsure_threshold: 0.0}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
        "  glass: {labels: [glass], servo_gpio: 13}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
        f"timing: {timing}\n"
        "spool: {save: none}\n"
        f"event_log: {{path: {tmp_path / 'events.sqlite3'}}}\n"
        "logging: {level: debug}\n"
    )
    return config


def start(config: Path, samples_dir: Path, events: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "bin_daemon", "run", "--config", str(config),
               "--hardware", "fake", "--images", str(samples_dir), "--realtime",
               "--events", str(events)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_mid_hold_closes_the_lid_and_exits_0_within_2_s(tmp_path, samples_dir, signum):
    config = write_config(tmp_path, "{hold_open_s: 60, lid_move_s: 0.05, max_open_s: 120}")
    events = tmp_path / "events.jsonl"
    proc = start(config, samples_dir, events)
    lines: list[str] = []
    try:
        wait_for_line(proc, "open, holding 60.00 s", lines)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=DEADLINE_S)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + err
    assert took < 2.0  # not the 60 s hold
    assert f"{signum.name}: stopping after the current item" in err
    assert err.rstrip().endswith("stopped: all lids closed")
    assert "Traceback" not in err
    (record,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert record["lid"] == "hold cut short (stopping)"
    assert "lid hold cut short (stopping)" in out


def log_rows(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT item_id, lid FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # created but no table yet
        return []


def wait_for_rows(path: Path, at_least: int, proc: subprocess.Popen) -> None:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and proc.poll() is None:
        if len(log_rows(path)) >= at_least:
            return
        time.sleep(0.05)  # polling a file another process writes; bounded by DEADLINE_S
    raise AssertionError(f"fewer than {at_least} rows in {path} (exit status {proc.poll()})")


def test_sigkill_mid_run_loses_no_item_and_restart_duplicates_none(tmp_path, samples_dir):
    config = write_config(tmp_path, "{hold_open_s: 0.05, lid_move_s: 0.01, cooldown_s: 0.01}")
    events = tmp_path / "events.jsonl"
    database = tmp_path / "events.sqlite3"
    for run, want in ((1, 3), (2, 6)):
        proc = start(config, samples_dir, events)
        try:
            wait_for_rows(database, want, proc)
            if run == 1:
                proc.kill()  # SIGKILL: no handler, no cleanup
                proc.wait(timeout=DEADLINE_S)
            else:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=DEADLINE_S)
                assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    completed = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    rows = log_rows(database)
    ids = [item_id for item_id, _ in rows]
    assert len(ids) == len(set(ids))  # no item twice
    assert len({r["item_id"] for r in completed}) == len(completed)
    logged = dict(rows)
    for record in completed:  # every completed item is in the log, with its outcome
        assert logged.get(record["item_id"]) == record["lid"], record["item_id"]
    runs = {item_id.split("-")[1] for item_id in ids}
    assert len(runs) == 2  # two runs, told apart in the ids
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
