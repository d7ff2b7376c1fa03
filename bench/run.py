"""``make bench``: how fast and how light, the shipped int8 model against the usual way.

Runs every runtime in its own fresh process (bench/worker.py), then the daemon on fake
hardware, and writes docs/benchmarks.json and this tool's sections of docs/BENCHMARKS.md
(any other section, such as "## Soak", is kept as it is).

    python bench/run.py [--threads 1 2 4] [--items 500] [--quick] [--console-only]

``--console-only``: just the daemon with its web console off vs polled (printed, not written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "worker.py"
SAMPLES = ROOT / "tests" / "data" / "samples"
DOCS = ROOT / "docs"
RUNTIMES = ("int8", "float-tflite", "keras-predict", "keras-call")
RUNTIME_NAMES = {
    "int8": "int8 TFLite (shipped; daemon's Classifier)",
    "int8-tta": "int8 TFLite + flip TTA (`model.tta: flip`)",
    "float-tflite": "float32 TFLite",
    "keras-predict": "Keras `model.predict(x)`",
    "keras-call": "Keras `model(x, training=False)`",
}

# -- the Pi projection's published inputs ---------------------------------------------------
PI4_MOBILENET_V2_MS = 44.0
PI4_SOURCE = (
    "XNNPACK README, 'Raspberry Pi' table: FP32 MobileNet v2 1.0X, RPi 4 (BCM2711), "
    "multi-threaded (4 threads), 44 ms (end2end_bench, Feb 2020), "
    "https://github.com/google/XNNPACK/blob/master/README.md"
)
PI5_SPEEDUP = 2.5
PI5_SPEEDUP_RANGE = (2.0, 3.0)
PI5_SOURCES = (
    "Eben Upton, Raspberry Pi 5 interview, HackSpace magazine: 'roughly two-and-a-half times "
    "as fast as a Raspberry Pi 4', https://hackspace.raspberrypi.com/articles/raspberry-pi-5; "
    "Raspberry Pi 5 launch coverage: '2-3x CPU performance' vs Pi 4, e.g. "
    "https://circuitdigest.com/news/the-new-raspberry-pi-5-is-here-faster-than-ever"
)

GOALS_TEXT = {
    "speed": "int8 at least 10x faster than Keras `predict` (p50, 2 threads)",
    "rss": "int8 at least 5x lighter than Keras `predict` (peak RSS)",
    "ready": "daemon `READY=1` under 2 s from process start",
    "trigger_to_lid": "trigger-to-lid p95 under 30 ms (this machine)",
}
BROWSER_REFRESH_S = 2.0
"""How often the status page asks for its live part (console.refresh_s's default)."""
QUIET_BUSY = 0.15
"""At most this fraction of the CPUs busy with other work (sampled before and after)."""
SECTION_START = "<!-- bench/run.py: generated from here -->"
SECTION_END = "<!-- bench/run.py: generated up to here -->"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- the machine ---------------------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flag_set = set(flags.group(1).split()) if flags else set()
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "simd": sorted(f for f in flag_set if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}),
        "ram_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
    }


def versions() -> dict:
    found = {}
    for name in ("ai-edge-litert", "tensorflow", "tensorflow-cpu", "keras", "numpy",
                 "opencv-python-headless"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "bin_daemon", "bench", "models")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty)}


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat), while we do nothing."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return round(1 - (idle1 - idle0) / max(1, total1 - total0), 3)


def others_running() -> dict:
    """What else loads the machine: a training run, other busy processes, the load average."""
    found = subprocess.run(
        ["pgrep", "-f", "bin-daemon train"], capture_output=True, text=True, check=False
    ).stdout.split()
    busy = cpu_busy()
    top = subprocess.run(
        ["ps", "-eo", "pcpu,args", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[:3]
    load1, load5, _ = os.getloadavg()
    return {
        "training_pids": found,
        "cpu_busy_2s": busy,
        "top_processes": [line.strip()[:120] for line in top] if busy > QUIET_BUSY else [],
        "loadavg_1m": round(load1, 2),
        "loadavg_5m": round(load5, 2),
    }


def is_quiet(state: dict) -> bool:
    return not state["training_pids"] and state["cpu_busy_2s"] <= QUIET_BUSY


# -- workers -------------------------------------------------------------------------------


def worker(runtime: str, threads: int, *extra: str) -> dict:
    """Spawn bench/worker.py in a fresh interpreter; its JSON result."""
    command = [sys.executable, str(WORKER), runtime, str(threads), *extra]
    spawned_at = time.time()
    done = subprocess.run(
        [*command, "--spawned-at", repr(spawned_at)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"bench: {shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the daemon ----------------------------------------------------------------------------


def daemon_run(items: int, workdir: Path, extra: tuple[str, ...] = ()) -> dict:
    """bin-daemon on fake hardware with NOTIFY_SOCKET on our own datagram socket."""
    notify_path = workdir / "notify.sock"
    events_path = workdir / "events.jsonl"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.05)
    messages: list[tuple[float, str]] = []
    exe = Path(sys.executable).parent / "bin-daemon"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "bin_daemon"]
    command += ["run", "--hardware", "fake", "--images", str(SAMPLES.relative_to(ROOT)),
                "--max-items", str(items), "--events", str(events_path), *extra]  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "STATE_DIRECTORY": str(workdir)}
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(name, None)
    stderr_path = workdir / "daemon.stderr"
    with stderr_path.open("wb") as stderr:
        spawned_at = time.time()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        while True:
            try:
                data = sock.recv(4096)
                messages.append((time.time(), data.decode(errors="replace")))
            except TimeoutError:
                pass
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
        ended_at = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
    while True:  # anything sent just before it exited
        try:
            messages.append((ended_at, sock.recv(4096).decode(errors="replace")))
        except (TimeoutError, BlockingIOError):
            break
    sock.close()
    if proc.returncode != 0:
        raise SystemExit(
            f"bench: {shlex.join(command)} failed (exit {proc.returncode}):\n"
            + stderr_path.read_text(errors="replace")[-3000:]
        )
    ready = [t for t, m in messages if "READY=1" in m.split("\n")]
    if not ready:
        raise SystemExit("bench: the daemon never sent READY=1")
    records = [json.loads(line) for line in events_path.read_text().splitlines() if line]
    if len(records) != items:
        raise SystemExit(f"bench: expected {items} events, got {len(records)}")
    latency = {key: [r["latency_ms"][key] for r in records] for key in records[0]["latency_ms"]}
    if "trigger_to_lid" not in latency:
        raise SystemExit("bench: events have no latency_ms.trigger_to_lid (an older daemon?)")
    latency["inference"] = [
        c - p for c, p in zip(latency["classify"], latency["preprocess"], strict=True)
    ]
    latency["lid_command"] = [
        t - total for t, total in zip(latency["trigger_to_lid"], latency["total"], strict=True)
    ]
    stats = {
        key: {
            "p50": round(percentile(values, 50), 3),
            "p95": round(percentile(values, 95), 3),
            "max": round(max(values), 3),
        }
        for key, values in latency.items()
    }
    return {
        "command": shlex.join(["bin-daemon", *command[1:]] if exe.exists() else command).replace(
            str(workdir), "$TMP"
        ),
        "items": len(records),
        "ready_s": round(ready[0] - spawned_at, 3),
        "wall_s": round(ended_at - spawned_at, 2),
        "items_per_s_after_ready": round(len(records) / (ended_at - ready[0]), 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "errors": sum(1 for r in records if r.get("error")),
        "unsure": sum(1 for r in records if r.get("unsure")),
        "latency_ms": stats,
    }


# -- the daemon with its web console polled -------------------------------------------------


def console_run(items: int, workdir: Path, rounds: int = 3) -> dict:
    """Trigger to lid with the web console off, on with a browser polling its status page,
    and on with a client polling it back to back; each run its own daemon process.

    The three take turns for ``rounds`` rounds (a shared machine's load drifts); each
    condition reports its median round by trigger-to-lid p95, all rounds' p95 kept.
    """
    import base64
    import threading
    import urllib.error
    import urllib.request

    default = (ROOT / "bin_daemon" / "default_config.yaml").read_text()
    password = "bench-console-password"
    (workdir / "console_password").write_text(password + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    on = default.replace("  listen: null", f"  listen: 127.0.0.1:{port}", 1)
    on = on.replace("  password_file: null", f"  password_file: {workdir / 'console_password'}", 1)
    if f"127.0.0.1:{port}" not in on or "password_file: null" in on:
        raise SystemExit("bench: the default config has no console.listen line to set")
    pauses = {"off": None, "browser": BROWSER_REFRESH_S, "polled": 0.0}
    token = base64.b64encode(f"bench:{password}".encode()).decode()

    def poll(stop: threading.Event, pause_s: float, served: list, refused: list) -> None:
        """What the status page fetches: every 2 s like a browser, or as fast as it is
        answered (429s not heeded)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/partials/status",
            headers={"Authorization": f"Basic {token}"},
        )
        while not stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                served.append((time.perf_counter() - started) * 1000)
                stop.wait(pause_s)
            except urllib.error.HTTPError as error:  # 429: over the console's budget
                error.read()
                refused.append((time.perf_counter() - started) * 1000)
            except OSError:
                time.sleep(0.01)  # not listening yet (or any more)

    done: dict[str, list[dict]] = {name: [] for name in pauses}
    for round_ in range(1, rounds + 1):
        for name, pause_s in pauses.items():
            folder = workdir / f"console-{name}-{round_}"
            folder.mkdir()
            (folder / "config.yaml").write_text(default if pause_s is None else on)
            stop = threading.Event()
            served: list[float] = []
            refused: list[float] = []
            client = threading.Thread(
                target=poll, args=(stop, pause_s or 0.0, served, refused), daemon=True
            )
            if pause_s is not None:
                client.start()
            try:
                run = daemon_run(items, folder, ("--config", str(folder / "config.yaml")))
            finally:
                stop.set()
            if client.is_alive():
                client.join(10)
            run["requests"], run["refused_429"] = len(served), len(refused)
            if served:
                run["request_ms"] = {
                    "p50": round(percentile(served, 50), 2),
                    "p95": round(percentile(served, 95), 2),
                }
                run["requests_per_s"] = round(len(served) / run["wall_s"], 1)
            t2l = run["latency_ms"]["trigger_to_lid"]
            log(
                f"console round {round_} {name}: trigger-to-lid p50 {t2l['p50']} ms, "
                f"p95 {t2l['p95']} ms, {len(served)} page requests"
            )
            done[name].append(run)
    runs: dict[str, dict] = {}
    for name, results in done.items():
        by_p95 = sorted(results, key=lambda r: r["latency_ms"]["trigger_to_lid"]["p95"])
        chosen = dict(by_p95[len(by_p95) // 2])
        chosen["trigger_to_lid_p95_each_round"] = [
            r["latency_ms"]["trigger_to_lid"]["p95"] for r in results
        ]
        runs[name] = chosen
    if not runs["polled"]["requests"] or not runs["browser"]["requests"]:
        raise SystemExit("bench: the polling client got no answer from the console")
    return runs


def console_markdown(console: dict) -> list[str]:
    off, polled = console["off"], console["polled"]
    browser = console.get("browser")
    lines = [
        "## The daemon with its web console polled",
        "",
        "Daemon runs as above, each its own process: console off; console on "
        "(`console.listen: 127.0.0.1:PORT`) with one client fetching the status page's live "
        "part (`/partials/status`, HTTP Basic) every 2 s like a browser; and with a client "
        "fetching it back to back for the whole run, not heeding 429s. The three take turns "
        "for three rounds (a shared machine's load drifts); each row is the median round by "
        "p95. "
        f"{polled['requests']} page requests were answered "
        f"({polled.get('requests_per_s', 0)}/s; p50 {polled['request_ms']['p50']} ms, p95 "
        f"{polled['request_ms']['p95']} ms each) and {polled['refused_429']} refused with 429 "
        "(over `console.max_requests_per_s`, 10/s by default).",
        "",
        "| run | items | trigger to lid p50 ms | p95 ms | p95 each round | max ms | "
        "items/s after READY | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    named = [("console off", off)]
    if browser is not None:
        named.append(("console on, a browser (every 2 s)", browser))
    named.append(("console on, polled back to back", polled))
    for name, run in named:
        t2l = run["latency_ms"]["trigger_to_lid"]
        rounds = ", ".join(fmt(v, 1) for v in run.get("trigger_to_lid_p95_each_round", []))
        lines.append(
            f"| {name} | {run['items']} | {fmt(t2l['p50'], 2)} | {fmt(t2l['p95'], 2)} | "
            f"{rounds or '-'} | {fmt(t2l['max'], 2)} | {run['items_per_s_after_ready']} | "
            f"{run['peak_rss_mb']} |"
        )
    lines.append("")
    return lines


# -- the report ----------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def tta_row(threads: int, repeat: int, runs_extra: list[str]) -> dict:
    """The int8 model with ``model.tta: flip`` (two classifications per item), as a runs row."""
    results = [worker("int8", threads, "--tta", "flip", *runs_extra) for _ in range(repeat)]
    chosen = dict(sorted(results, key=lambda r: r["p50_ms"])[len(results) // 2])
    chosen.update(
        runtime="int8-tta",
        p50_ms_each_process=[r["p50_ms"] for r in results],
        processes=len(results),
    )
    log(f"int8 + flip TTA {threads}t: p50 {chosen['p50_ms']:.2f} ms, p95 {chosen['p95_ms']:.2f} ms")
    return chosen


def build_results(args, runs, convert, daemon, context) -> dict:
    by = {(r["runtime"], r["threads"]): r for r in runs}
    two = 2 if 2 in args.threads else args.threads[0]
    int8, keras = by[("int8", two)], by[("keras-predict", two)]
    mnv2 = context["mobilenet_v2"]
    ratio_pi4 = PI4_MOBILENET_V2_MS / mnv2["p50_ms"]
    pi4 = {
        "int8_ms_p50": round(int8["p50_ms"] * ratio_pi4, 1),
        "int8_ms_p95": round(int8["p95_ms"] * ratio_pi4, 1),
        "trigger_to_lid_ms_p95": round(
            daemon["latency_ms"]["trigger_to_lid"]["p95"] * ratio_pi4, 1
        ),
    }

    def pi5(value: float) -> dict:
        low, high = PI5_SPEEDUP_RANGE
        return {
            "central": round(value / PI5_SPEEDUP, 1),
            "range": [round(value / high, 1), round(value / low, 1)],
        }

    speedup = keras["p50_ms"] / int8["p50_ms"]
    lighter = keras["rss_mb"] / int8["rss_mb"]
    ready_s = daemon["ready_s"]
    t2l_p95 = daemon["latency_ms"]["trigger_to_lid"]["p95"]
    goals = {
        "speed": {"target": ">= 10x", "measured": round(speedup, 1), "met": speedup >= 10},
        "rss": {"target": ">= 5x", "measured": round(lighter, 1), "met": lighter >= 5},
        "ready": {"target": "< 2 s", "measured": ready_s, "met": ready_s < 2},
        "trigger_to_lid": {"target": "< 30 ms", "measured": t2l_p95, "met": t2l_p95 < 30},
    }
    results = {
        "int8_ms_p50_2t": int8["p50_ms"],
        "int8_ms_p95_2t": int8["p95_ms"],
        "float_tflite_ms_p50_2t": by[("float-tflite", two)]["p50_ms"],
        "keras_predict_ms_p50_2t": keras["p50_ms"],
        "keras_predict_ms_p95_2t": keras["p95_ms"],
        "keras_call_ms_p50_2t": by[("keras-call", two)]["p50_ms"],
        "int8_rss_mb": int8["rss_mb"],
        "float_tflite_rss_mb": by[("float-tflite", two)]["rss_mb"],
        "keras_rss_mb": keras["rss_mb"],
        "int8_cold_start_s": int8["cold_start_s"],
        "keras_cold_start_s": keras["cold_start_s"],
        "ready_s": ready_s,
        "trigger_to_lid_ms_p50": daemon["latency_ms"]["trigger_to_lid"]["p50"],
        "trigger_to_lid_ms_p95": t2l_p95,
        "speedup_int8_vs_keras_predict_2t": round(speedup, 1),
        "rss_ratio_keras_vs_int8": round(lighter, 1),
        "goals": goals,
        "threads_for_headline": two,
        "model": context["model"],
        "keras_weights": convert["weights"],
        "runs": runs,
        "daemon": daemon,
        "console": context.get("console"),
        "projection": {
            "label": "PROJECTION, not measured",
            "formula": (
                "Pi 4 = measured here x (published Pi 4 MobileNetV2 FP32 XNNPACK ms / "
                "MobileNetV2 FP32 XNNPACK ms measured here, same run, "
                f"{two} threads); Pi 5 = Pi 4 / {PI5_SPEEDUP} (range / 3 .. / 2)"
            ),
            "mobilenet_v2_here_ms_p50": mnv2["p50_ms"],
            "mobilenet_v2_pi4_published_ms": PI4_MOBILENET_V2_MS,
            "ratio_pi4_over_here": round(ratio_pi4, 2),
            "pi4": pi4,
            "pi5": {key: pi5(value) for key, value in pi4.items()},
            "sources": [PI4_SOURCE, PI5_SOURCES],
        },
        "machine": context["machine"],
        "versions": context["versions"],
        "git": context["git"],
        "date": context["date"],
        "command": context["command"],
        "duration_s": context["duration_s"],
        "others_running": context["others_running"],
        "quiet": context["quiet"],
    }
    return results


def markdown(res: dict) -> str:
    m, v, d = res["machine"], res["versions"], res["daemon"]
    two = res["threads_for_headline"]
    quiet = res["quiet"]
    lines = [
        SECTION_START,
        "",
        "## Summary",
        "",
        f"Generated by `{res['command']}` (bench/run.py) on {res['date']}, commit "
        f"`{res['git']['commit'][:12]}`{' (uncommitted changes)' if res['git']['dirty'] else ''}, "
        f"in {res['duration_s']:.0f} s. Numbers: docs/benchmarks.json.",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"({', '.join(m['simd']) or 'no AVX2'}), {m['ram_gb']} GB RAM, {m['os']}, "
        f"Python {m['python']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Model: `{res['model']['file']}` {res['model']['version']} "
        f"({res['model']['input_size']}x{res['model']['input_size']} px, sha256 "
        f"{res['model']['sha256'][:12]}); float Keras weights: {res['keras_weights']}",
        "- Machine load: "
        + (
            "quiet (no training run; other work used "
            f"{res['others_running']['start']['cpu_busy_2s']:.0%} / "
            f"{res['others_running']['end']['cpu_busy_2s']:.0%} of the CPUs just before / "
            "after)"
            if quiet
            else "**NOT quiet**: "
            + json.dumps(res["others_running"])
            + " - timings are inflated by other work"
        ),
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for key, goal in res["goals"].items():
        unit = {"speed": "x", "rss": "x", "ready": " s", "trigger_to_lid": " ms"}[key]
        lines.append(
            f"| {GOALS_TEXT[key]} | {goal['target']} | {goal['measured']}{unit} | "
            f"{'met' if goal['met'] else '**not met**'} |"
        )
    lines += [
        "",
        "## Classification, one image at a time",
        "",
        "Each row is a fresh process (bench/worker.py) that imports only its runtime, loads the "
        "model, and classifies a real sample photo (decoded once) through "
        "`bin_daemon.model.preprocess.to_model_input`: the timed call is preprocessing + inference + "
        "reading the scores. Warm runs only (3 warm-ups first); each row is the median of "
        "`processes` fresh processes by p50 (all p50s in the JSON); cold start = process spawn to "
        "the first result (interpreter start, imports, model load, first inference); RSS = "
        "peak resident set (`ru_maxrss`) at the end.",
        "",
        "| runtime | threads | p50 ms | p95 ms | of which preprocess (p50) | cold start s | "
        "peak RSS MB | runs | sample's label |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {RUNTIME_NAMES[r['runtime']]} | {r['threads']} | {fmt(r['p50_ms'], 2)} | "
            f"{fmt(r['p95_ms'], 2)} | {fmt(r['preprocess_p50_ms'], 2)} | "
            f"{fmt(r['cold_start_s'], 2)} | {fmt(r['rss_mb'])} | {r['runs']} | {r['label']} |"
        )
    by = {(r["runtime"], r["threads"]): r for r in res["runs"]}
    overhead = res["keras_predict_ms_p50_2t"] - res["keras_call_ms_p50_2t"]
    keras_note = (
        f"`predict` costs {fmt(overhead)} ms more per image than calling the same model "
        f"directly ({fmt(res['keras_call_ms_p50_2t'], 2)} ms): its per-call machinery (a "
        "data adapter, an iterator and callbacks, built for one image)."
        if overhead > 0
        else f"Calling the model directly is no faster here "
        f"({fmt(res['keras_call_ms_p50_2t'], 2)} ms): it runs eagerly, op by op, while "
        "`predict` runs a compiled `tf.function` graph; its per-call machinery (a data "
        "adapter, an iterator, callbacks) costs less than eager dispatch of this "
        "~150-layer network."
    )
    lines += [
        "",
        f"At {two} threads int8 is **{res['speedup_int8_vs_keras_predict_2t']}x** faster than "
        f"Keras `predict` ({fmt(res['int8_ms_p50_2t'], 2)} vs "
        f"{fmt(res['keras_predict_ms_p50_2t'], 2)} ms p50) and "
        f"**{res['rss_ratio_keras_vs_int8']}x** lighter ({fmt(res['int8_rss_mb'])} vs "
        f"{fmt(res['keras_rss_mb'])} MB peak RSS; TensorFlow alone is most of that). " + keras_note,
        "",
        f"int8 vs float32 TFLite, same architecture, {two} threads: "
        f"{fmt(by[('int8', two)]['p50_ms'], 2)} vs {fmt(by[('float-tflite', two)]['p50_ms'], 2)} "
        f"ms p50, {fmt(by[('int8', two)]['rss_mb'])} vs "
        f"{fmt(by[('float-tflite', two)]['rss_mb'])} MB.",
    ]
    if 4 in {r["threads"] for r in res["runs"]}:
        lines += [
            "",
            f"4 threads on {m['usable_cpus']} usable CPUs is oversubscribed: the extra threads "
            "contend for the same cores. int8 p50 at 2 / 4 threads: "
            f"{fmt(by[('int8', 2)]['p50_ms'], 2)} / {fmt(by[('int8', 4)]['p50_ms'], 2)} ms "
            f"(p95 {fmt(by[('int8', 2)]['p95_ms'], 2)} / {fmt(by[('int8', 4)]['p95_ms'], 2)}); "
            f"Keras predict {fmt(by[('keras-predict', 2)]['p50_ms'], 1)} / "
            f"{fmt(by[('keras-predict', 4)]['p50_ms'], 1)} ms. On a 4-core Pi, 4 threads is "
            "the whole chip; keep `model.num_threads` at or below the core count.",
        ]
    lat = d["latency_ms"]
    lines += [
        "",
        "## The daemon on fake hardware",
        "",
        f"`{d['command']}` with `NOTIFY_SOCKET` on the benchmark's own datagram socket "
        "(gpiozero mock pins, the fake camera serving the sample photos; hold and cool-down "
        "simulated).",
        "",
        f"- Process start to `READY=1`: **{d['ready_s']} s** (imports, config, model load "
        "and check, hardware, lids closed)",
        f"- {d['items']} items, {d['errors']} errors, {d['unsure']} unsure; "
        f"{d['items_per_s_after_ready']} items/s after READY; peak RSS {d['peak_rss_mb']} MB",
        "",
        "Trigger to lid command, per item, from the event records' `latency_ms` (the trigger is "
        "the debounced sensor edge; the end is the return of the servo's open command; servo "
        "travel and the hold are excluded; the debounce window itself, "
        "`sensor.debounce_s`, comes before it):",
        "",
        "| step | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
    ]
    steps = [
        ("capture (fake camera: read + JPEG decode of the photo)", "capture"),
        ("preprocess (crop, resize; quantise unless identity)", "preprocess"),
        ("inference (invoke + scores)", "inference"),
        ("classify = preprocess + inference", "classify"),
        ("decide (policy)", "decide"),
        ("total: trigger to decision", "total"),
        ("after the decision: the decision hook (event log) + servo open command", "lid_command"),
        ("**trigger to lid command**", "trigger_to_lid"),
    ]
    for name, key in steps:
        s = lat[key]
        lines.append(f"| {name} | {fmt(s['p50'], 2)} | {fmt(s['p95'], 2)} | {fmt(s['max'], 2)} |")
    if res.get("console"):
        lines += ["", *console_markdown(res["console"])]
    p = res["projection"]
    lines += [
        "",
        "## Raspberry Pi 4 and 5: PROJECTION, not measured",
        "",
        "No Pi was used. The numbers below scale this machine's measurements by published "
        "per-device ratios:",
        "",
        f"- {p['formula']}.",
        f"- MobileNetV2 1.0 224 FP32 (random weights, as in XNNPACK's own benchmark), "
        f"converted to TFLite and timed here with ai-edge-litert/XNNPACK, {two} threads: "
        f"{p['mobilenet_v2_here_ms_p50']} ms p50; published on a Pi 4: "
        f"{p['mobilenet_v2_pi4_published_ms']} ms; ratio {p['ratio_pi4_over_here']}.",
        "",
        "| | this machine (measured) | Pi 4 (projected) | Pi 5 (projected, range) |",
        "|---|---|---|---|",
    ]
    here = {
        "int8_ms_p50": res["int8_ms_p50_2t"],
        "int8_ms_p95": res["int8_ms_p95_2t"],
        "trigger_to_lid_ms_p95": res["trigger_to_lid_ms_p95"],
    }
    names = {
        "int8_ms_p50": "int8 classify p50 ms",
        "int8_ms_p95": "int8 classify p95 ms",
        "trigger_to_lid_ms_p95": "trigger to lid p95 ms",
    }
    for key, name in names.items():
        pi5 = p["pi5"][key]
        lines.append(
            f"| {name} | {here[key]} | {p['pi4'][key]} | {pi5['central']} "
            f"({pi5['range'][0]}-{pi5['range'][1]}) |"
        )
    lines += [
        "",
        "Caveats: the Pi 4 figure is a 2020 XNNPACK FP32 number on 4 threads (all 4 cores), "
        f"ours uses all {m['usable_cpus']} cores here; newer XNNPACK releases and int8 kernels "
        "with NEON dot-product are faster on ARM than that, so the int8 projection is likely "
        "pessimistic. The projection assumes 4 interpreter threads on the Pi's 4 cores: the "
        "default `model.num_threads` is 2, set it to 4 on a Pi to get there. "
        "Scaling the whole trigger-to-lid path by a compute ratio ignores the real "
        "camera (picamera2 hands over a frame already in memory, no JPEG decode) and GPIO "
        "latency. Sources:",
        "",
        *[f"- {source}" for source in p["sources"]],
        "",
        "## How to reproduce",
        "",
        "`make bench` (about "
        f"{max(1, round(res['duration_s'] / 60))} min). One worker by hand: "
        "`.venv/bin/python bench/worker.py int8 2` (or `float-tflite 2 --tflite FILE`, "
        "`keras-predict 2`, `keras-call 2`). Take numbers on a quiet machine: the report says "
        "whether a training run or other load was present.",
        "",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, generated: str) -> None:
    """Replace only this tool's block; keep everything else (e.g. a '## Soak' section)."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if SECTION_START in text and SECTION_END in text:
            before, rest = text.split(SECTION_START, 1)
            after = rest.split(SECTION_END, 1)[1].lstrip("\n")
            text = before + generated + ("\n" + after if after else "")
        else:
            text = text.rstrip("\n") + "\n\n" + generated
    else:
        text = "# Benchmarks\n\n" + generated
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--items", type=int, default=500, help="daemon items (default 500)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="fresh processes per runtime and thread count"
    )
    parser.add_argument("--quick", action="store_true", help="few runs: a smoke test")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    parser.add_argument("--command", default="make bench", help="how this run was started")
    parser.add_argument(
        "--console-only",
        action="store_true",
        help="only the web console's piece: print its numbers as JSON, write nothing",
    )
    args = parser.parse_args(argv)
    if args.console_only:
        with tempfile.TemporaryDirectory(prefix="bin-daemon-bench-") as tmp:
            busy = others_running()
            console = console_run(args.items, Path(tmp))
        print(json.dumps({"console": console, "others_running": busy}, indent=2))
        print("\n".join(console_markdown(console)))
        return 0
    started = time.monotonic()
    before = others_running()
    if not is_quiet(before):
        log(f"warning: the machine is busy ({before}); timings will be inflated")
    card = json.loads((ROOT / "models" / "model_card.json").read_text())
    model = {
        "file": f"models/{card.get('model_file', 'waste_classifier.tflite')}",
        "version": card.get("version"),
        "sha256": card.get("sha256"),
        "input_size": None,  # the int8 worker reports the model's own
    }
    runs_extra = ["--runs", "5"] if args.quick else []
    if args.quick:
        args.repeat = 1
    with tempfile.TemporaryDirectory(prefix="bin-daemon-bench-") as tmp:
        workdir = Path(tmp)
        float_path, mnv2_path = workdir / "float.tflite", workdir / "mobilenet_v2.tflite"
        log("converting the float Keras model (and a MobileNetV2 reference) to float TFLite")
        convert = worker(
            "convert-float", 2, "--out", str(float_path), "--mobilenet-v2-out", str(mnv2_path)
        )
        rounds: dict[tuple[str, int], list[dict]] = {}
        for round_ in range(1, args.repeat + 1):
            for threads in args.threads:
                for runtime in RUNTIMES:
                    extra = ["--tflite", str(float_path)] if runtime == "float-tflite" else []
                    result = worker(runtime, threads, *extra, *runs_extra)
                    log(
                        f"round {round_} {runtime:14s} {threads}t: p50 {result['p50_ms']:.2f} ms, "
                        f"p95 {result['p95_ms']:.2f} ms, RSS {result['rss_mb']:.0f} MB, "
                        f"cold {result['cold_start_s']:.2f} s"
                    )
                    rounds.setdefault((runtime, threads), []).append(result)
                    if runtime == "int8":
                        model["input_size"] = result["input_size"]
        runs = []
        for (_, _), results in rounds.items():  # the median process by p50, all p50s kept
            chosen = dict(sorted(results, key=lambda r: r["p50_ms"])[len(results) // 2])
            chosen["p50_ms_each_process"] = [r["p50_ms"] for r in results]
            chosen["processes"] = len(results)
            runs.append(chosen)
        two = 2 if 2 in args.threads else args.threads[0]
        runs.append(tta_row(two, args.repeat, runs_extra))  # model.tta: flip
        mnv2 = worker("float-tflite", two, "--tflite", str(mnv2_path), *runs_extra)
        log(f"MobileNetV2 reference {two}t: p50 {mnv2['p50_ms']:.2f} ms")
        log(f"daemon: {args.items} items on fake hardware")
        daemon = daemon_run(args.items, workdir)
        log(
            f"daemon: READY {daemon['ready_s']} s, trigger-to-lid p95 "
            f"{daemon['latency_ms']['trigger_to_lid']['p95']} ms"
        )
        log(f"daemon with the web console: {args.items} items, console off / on and polled")
        console = console_run(args.items, workdir)
    after = others_running()
    quiet = is_quiet(before) and is_quiet(after)
    context = {
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": args.command,
        "duration_s": round(time.monotonic() - started, 1),
        "others_running": {"start": before, "end": after},
        "quiet": quiet,
        "mobilenet_v2": mnv2,
        "model": model,
        "console": console,
    }
    results = build_results(args, runs, convert, daemon, context)
    if args.quick:
        results["quick"] = True
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.out_dir / "BENCHMARKS.md", markdown(results))
    log(f"wrote {args.out_dir / 'benchmarks.json'} and {args.out_dir / 'BENCHMARKS.md'}")
    for key, goal in results["goals"].items():
        log(
            f"goal {key}: {goal['measured']} ({goal['target']}) {'met' if goal['met'] else 'NOT MET'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
