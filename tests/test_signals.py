"""SIGTERM in the middle of an item, as systemd sends it: a real process, real time."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

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


def test_sigterm_mid_hold_closes_the_lid_and_exits_0(tmp_path, samples_dir):
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
        "timing: {hold_open_s: 60, lid_move_s: 0.05}\n"
        "spool: {save: none}\n"
        "logging: {level: debug}\n"
    )
    events = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "bin_daemon", "run", "--config", str(config),
               "--hardware", "fake", "--images", str(samples_dir), "--realtime",
               "--events", str(events)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    lines: list[str] = []
    try:
        wait_for_line(proc, "open, holding 60.00 s", lines)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + err
    assert time.monotonic() - sent < 10  # not the 60 s hold
    assert "SIGTERM: stopping after the current item" in err
    assert err.rstrip().endswith("stopped: all lids closed")
    assert "Traceback" not in err
    (record,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert record["lid"] == "hold cut short (stopping)"
    assert "lid hold cut short (stopping)" in out
