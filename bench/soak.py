"""Soak: the daemon in-process for many items on fake hardware with the real model.

    python bench/soak.py --items 100000          (make soak)

Simulated time (hold and cool-down cost nothing), the real int8 model from models/, the
event log (SQLite, fsynced per decision) and the spool on (every frame saved, a small quota,
so the quota is enforced all the time). Samples RSS (/proc/self/status VmRSS) and open file
descriptors (/proc/self/fd) at the start, every --every items, and at the end; checks the
spool stays under its quota and that the event log has every item exactly once. Writes
docs/soak.json and the "## Soak" section of docs/BENCHMARKS.md (other sections are kept).

Fake-hardware artefact handled here, not in the daemon: gpiozero's mock pins append every
state change to a list (``MockPin.states``) for test assertions. Real pins do not. The soak
clears those lists every 100 items so that they are not counted as the daemon's memory.
``py_blocks`` (``sys.getallocatedblocks()``) in each sample tells Python objects that stay
alive (a leak) from memory the allocator keeps (RSS that does not come back).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bin_daemon.loop.service import RunOptions, Service  # noqa: E402
from bin_daemon.records import journal  # noqa: E402

START = "<!-- soak:start (bench/soak.py writes this section) -->"
END = "<!-- soak:end -->"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def folder_mb(folder: Path) -> float:
    if not folder.is_dir():
        return 0.0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20


def training_running() -> bool:
    done = subprocess.run(["pgrep", "-f", "bin-daemon train"], capture_output=True, text=True)
    return bool(done.stdout.strip())


class SamplingNotifier(journal.Notifier):
    """Counts items from the STATUS= sent after each one; samples every ``every`` items."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(send=lambda message: True)
        self.soak = soak

    def ready(self, status: str = "") -> None:
        self.soak.sample("ready")

    def status(self, text: str) -> None:
        self.soak.on_item()


class Soak:
    def __init__(self, items: int, every: int, state: Path, quota_mb: float) -> None:
        self.items, self.every, self.state, self.quota_mb = items, every, state, quota_mb
        self.done = 0
        self.samples: list[dict] = []
        self.spool_max_mb = 0.0
        self.service: Service | None = None
        self.started = time.perf_counter()

    def on_item(self) -> None:
        self.done += 1
        if self.done % 100 == 0:
            self.clear_mock_pin_history()
        if self.done % 1000 == 0:
            self.spool_max_mb = max(self.spool_max_mb, folder_mb(self.state / "spool"))
        if self.done == min(1000, self.items) or self.done % self.every == 0:
            self.sample(str(self.done))

    def clear_mock_pin_history(self) -> None:
        sorter = self.service.sorter if self.service else None
        if sorter is None:
            return
        pins = [getattr(lid, "pin", None) for lid in sorter.lids.values()]
        pins.append(getattr(getattr(sorter.sensor, "_sensor", None), "pin", None))
        for pin in pins:
            if pin is not None and hasattr(pin, "clear_states"):
                pin.clear_states()

    def sample(self, at: str) -> None:
        self.clear_mock_pin_history()
        spool = folder_mb(self.state / "spool")
        self.spool_max_mb = max(self.spool_max_mb, spool)
        elapsed = time.perf_counter() - self.started
        point = {
            "at": at,
            "items": self.done,
            "elapsed_s": round(elapsed, 1),
            "rss_mb": round(rss_mb(), 2),
            "py_blocks": sys.getallocatedblocks(),
            "open_fds": open_fds(),
            "spool_mb": round(spool, 3),
            "event_log_mb": round(
                sum(p.stat().st_size for p in self.state.glob("events.sqlite3*")) / 2**20, 3
            ),
        }
        self.samples.append(point)
        print(json.dumps(point), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    state = Path(tempfile.mkdtemp(prefix="bin-daemon-soak-"))
    config = state / "config.yaml"
    config.write_text(
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
        "  glass: {labels: [glass], servo_gpio: 13}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
        f"spool: {{save: all, dir: {state / 'spool'}, quota_mb: {args.quota_mb}}}\n"
        f"event_log: {{path: {state / 'events.sqlite3'}}}\n"
        "logging: {level: warning, journal: 'no'}\n"
    )
    soak = Soak(args.items, args.every, state, args.quota_mb)
    options = RunOptions(config, "fake", ROOT / "tests" / "data" / "samples", max_items=args.items)
    training = training_running()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with open(os.devnull, "w") as devnull:
        service = Service(options, notifier=SamplingNotifier(soak), stdout=devnull)
        soak.service = service
        started = time.perf_counter()
        status = service.run()
        wall_s = time.perf_counter() - started
    soak.sample("end")
    database = state / "events.sqlite3"
    with sqlite3.connect(database) as db:
        rows, distinct = db.execute(
            "SELECT count(*), count(DISTINCT item_id) FROM events"
        ).fetchone()
        completed = db.execute("SELECT count(*) FROM events WHERE lid = 'completed'").fetchone()[0]
    first = next(s for s in soak.samples if s["at"] == str(min(1000, args.items)))
    ready = soak.samples[0]
    end = soak.samples[-1]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": _cpu_name(),
            "training_run_present_at_start": training,
            "training_run_present_at_end": training_running(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "exit_status": status,
        "items": service.sorter.counts.items if service.sorter else 0,
        "wall_s": round(wall_s, 1),
        "items_per_s": round(args.items / wall_s, 1),
        "rss_mb": {
            "ready": ready["rss_mb"],
            "after_1000": first["rss_mb"],
            "end": end["rss_mb"],
            "growth_after_warmup": round(end["rss_mb"] - first["rss_mb"], 2),
        },
        "open_fds": {
            "ready": ready["open_fds"],
            "end": end["open_fds"],
            "max": max(s["open_fds"] for s in soak.samples),
        },
        "spool": {
            "quota_mb": args.quota_mb,
            "max_mb": round(soak.spool_max_mb, 3),
            "end_mb": end["spool_mb"],
        },
        "event_log": {
            "rows": rows,
            "distinct_item_ids": distinct,
            "completed": completed,
            "mb": round(sum(p.stat().st_size for p in state.glob("events.sqlite3*")) / 2**20, 2),
        },
        "counts": {"unsure": service.sorter.counts.unsure, "errors": service.sorter.counts.errors},
        "samples": soak.samples,
    }
    result["pass"] = {
        "all_items": result["items"] == args.items == rows == distinct,
        "rss_growth_under_5_mb": result["rss_mb"]["growth_after_warmup"] < 5,
        "fds_stable": result["open_fds"]["end"] <= result["open_fds"]["ready"] + 2,
        "spool_under_quota": soak.spool_max_mb <= args.quota_mb,
    }
    if not args.keep:
        for path in sorted(state.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        state.rmdir()
    return result


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def markdown(result: dict) -> str:
    r, m = result, result["machine"]
    load = (
        "a training run was present"
        if (m["training_run_present_at_start"] or m["training_run_present_at_end"])
        else "no training run present"
    )
    load += (
        f"; load average {m['load_average_at_start'][0]} at the start, "
        f"{m['load_average_at_end'][0]} at the end"
    )
    rows = "\n".join(
        f"| {s['at']} | {s['items']} | {s['elapsed_s']} | {s['rss_mb']} | {s['open_fds']} | "
        f"{s['spool_mb']} |"
        for s in r["samples"]
    )
    verdict = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in r["pass"].items())
    return f"""{START}
## Soak

`{r["command"]}` on {r["date"][:10]}: {m["cpu"]}, {m["cpus"]} CPUs, Python {m["python"]}
({load}). The daemon in-process on fake hardware (gpiozero mock pins, the sample images as
camera frames) with the real int8 model, simulated hold and cool-down times, the SQLite
event log (one fsync per decision) and the spool saving every frame under a
{r["spool"]["quota_mb"]} MB quota.

| | |
|---|---|
| items | {r["items"]:,} in {r["wall_s"]} s: **{r["items_per_s"]} items/s** ({r["counts"]["unsure"]} unsure, {r["counts"]["errors"]} errors) |
| RSS | {r["rss_mb"]["ready"]} MB at ready, {r["rss_mb"]["after_1000"]} MB after 1,000 items, {r["rss_mb"]["end"]} MB at the end: **{r["rss_mb"]["growth_after_warmup"]:+} MB** after warm-up |
| open file descriptors | {r["open_fds"]["ready"]} at ready, {r["open_fds"]["end"]} at the end (max {r["open_fds"]["max"]}) |
| spool | at most {r["spool"]["max_mb"]} MB (quota {r["spool"]["quota_mb"]} MB), {r["spool"]["end_mb"]} MB at the end |
| event log | {r["event_log"]["rows"]:,} rows, {r["event_log"]["distinct_item_ids"]:,} distinct item ids, {r["event_log"]["completed"]:,} completed; {r["event_log"]["mb"]} MB |
| checks | {verdict} |

| at | items | s | RSS MB | fds | spool MB |
|---|---|---|---|---|---|
{rows}

Items/s here is the host's CPU time per item (capture = JPEG decode, classify, spool JPEG
encode, an fsync), not a Pi's; on a bin items come seconds apart. The mock pins' state
history (a test aid of gpiozero) is cleared every 100 items, see bench/soak.py.
{END}
"""


def write_section(path: Path, section: str) -> None:
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            before, rest = text.split(START, 1)
            text = before + section.rstrip("\n") + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = "# Benchmarks\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample every N items")
    parser.add_argument("--quota-mb", type=float, default=2.0, help="spool quota")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--keep", action="store_true", help="keep the state folder")
    args = parser.parse_args(argv)
    result = run(args)
    (args.out_dir / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    write_section(args.out_dir / "BENCHMARKS.md", markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    return 0 if all(result["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
