"""The benchmark's pieces, quickly: one int8 worker run, and the report keeping others' sections.

No timing assertions: only that the numbers are there and sane.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_worker_prints_its_numbers_as_json():
    worker = str(ROOT / "bench" / "worker.py")
    spawned_at = time.time()
    done = subprocess.run(
        [sys.executable, worker, "int8", "1", "--runs", "5", "--spawned-at", repr(spawned_at)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "int8" and result["threads"] == 1 and result["runs"] == 5
    for key in ("p50_ms", "p95_ms", "min_ms", "cold_start_s", "rss_mb", "startup_to_load_s"):
        assert result[key] > 0, key
    assert result["min_ms"] <= result["p50_ms"] <= result["p95_ms"]
    assert result["startup_to_load_s"] <= result["cold_start_s"] < time.time() - spawned_at + 1
    assert 0 <= result["preprocess_p50_ms"] < result["p50_ms"]
    assert result["input_size"] > 0 and result["label"]


def test_percentile_matches_numpy_linear():
    """The worker avoids importing numpy (it would count in its start-up time), so its own
    percentile is checked against numpy's default ("linear") here."""
    worker = load_bench_module("worker")
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert worker.percentile(values, 50) == 3.0
    assert worker.percentile(values, 95) == 4.8
    assert worker.percentile([7.0], 95) == 7.0
    rng = np.random.default_rng(7)
    for size in (1, 2, 3, 7, 10, 101, 1000):
        data = rng.lognormal(1.0, 0.8, size)  # latency-like: skewed, no ties
        for q in (0, 1, 5, 25, 50, 75, 95, 99, 100, *rng.uniform(0, 100, 5)):
            expected = np.percentile(data, q, method="linear")
            assert worker.percentile(list(data), float(q)) == pytest.approx(expected, rel=1e-12)


def test_report_keeps_other_sections(tmp_path):
    run = load_bench_module("run")
    path = tmp_path / "BENCHMARKS.md"
    soak = "## Soak\n\nwritten by someone else\n"
    run.write_markdown(path, f"{run.SECTION_START}\nfirst\n{run.SECTION_END}\n")
    path.write_text(path.read_text() + "\n" + soak)
    run.write_markdown(path, f"{run.SECTION_START}\nsecond\n{run.SECTION_END}\n")
    text = path.read_text()
    assert "second" in text and "first" not in text
    assert text.count(soak) == 1 and text.startswith("# Benchmarks")


def test_int8_worker_runs_with_flip_tta():
    command = [sys.executable, str(ROOT / "bench" / "worker.py"), "int8", "1", "--runs", "3"]
    done = subprocess.run(
        [*command, "--tta", "flip"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "int8" and result["tta"] == "flip" and result["p50_ms"] > 0


def test_tta_row_is_the_median_process_named_as_its_own_runtime(monkeypatch):
    run = load_bench_module("run")
    calls = []

    def fake_worker(runtime, threads, *extra):
        calls.append((runtime, threads, extra))
        return {"runtime": runtime, "threads": threads, "p50_ms": [3.0, 1.0, 2.0][len(calls) - 1],
                "p95_ms": 4.0}  # fmt: skip

    monkeypatch.setattr(run, "worker", fake_worker)
    row = run.tta_row(2, 3, ["--runs", "5"])
    assert calls == [("int8", 2, ("--tta", "flip", "--runs", "5"))] * 3
    assert row["runtime"] == "int8-tta" and row["runtime"] in run.RUNTIME_NAMES
    assert row["p50_ms"] == 2.0 and row["p50_ms_each_process"] == [3.0, 1.0, 2.0]
    assert row["processes"] == 3


def test_console_section_reports_both_runs():
    run = load_bench_module("run")
    latency = {"trigger_to_lid": {"p50": 15.7, "p95": 43.1, "max": 245.8}}
    off = {"items": 1000, "latency_ms": latency, "items_per_s_after_ready": 45.7,
           "peak_rss_mb": 135.7, "requests": 0, "refused_429": 0}  # fmt: skip
    polled = {**off, "requests": 265, "refused_429": 0, "requests_per_s": 10.2,
              "request_ms": {"p50": 98.8, "p95": 115.3}}  # fmt: skip
    lines = run.console_markdown({"off": off, "polled": polled})
    assert lines[0] == "## The daemon with its web console polled"
    rows = [line for line in lines if line.startswith("| console")]
    assert rows == [
        "| console off | 1000 | 15.70 | 43.10 | - | 245.80 | 45.7 | 135.7 |",
        "| console on, polled back to back | 1000 | 15.70 | 43.10 | - | 245.80 | 45.7 | 135.7 |",
    ]
    assert "265 page requests were answered" in "\n".join(lines)
