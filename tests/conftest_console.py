"""The console's test set-up: a real run's records, a console on them, a free port."""

from __future__ import annotations

import io
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bin_daemon.console.state import DaemonView
from bin_daemon.loop.policy import Policy
from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.model.classifier import Classifier
from bin_daemon.records.spool import Spool

SAMPLES = Path(__file__).resolve().parent / "data" / "samples"
PASSWORD = "correct horse battery"
UNSURE_BELOW = 0.95
"""High, so that a run over the 24 samples leaves several unsure items to review."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, *, listen: str | None = None, extra: str = "") -> Path:
    (folder / "console_password").write_text(PASSWORD + "\n")
    console = (
        f'console: {{listen: "{listen}", password_file: console_password}}\n' if listen else ""
    )
    path = folder / "config.yaml"
    path.write_text(
        f"model: {{unsure_threshold: {UNSURE_BELOW}}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
        "  glass: {labels: [glass], servo_gpio: 13}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
        "spool: {save: unsure, dir: spool}\n"
        "event_log: {path: events.sqlite3}\n" + console + extra
    )
    return path


def sort_samples(folder: Path, items: int = 24) -> Path:
    """The real daemon on fake hardware with the real model, simulated time: its config."""
    config = write_config(folder)
    service = Service(RunOptions(config, "fake", SAMPLES, max_items=items), stdout=io.StringIO())
    assert service.run() == 0
    return config


@dataclass
class Daemon:
    """What the console sees of a daemon that ran: the real model, policy and spool."""

    classifier: Classifier
    policy: Policy
    spool: Spool
    model_dir: Path
    faults: dict
    telemetry: tuple[bool, bool | None] = (False, None)
    class_bias: dict = field(default_factory=dict)
    site_head: object = None
    site_examples: int = 0

    def view(self) -> DaemonView:
        return DaemonView(
            state="armed",
            items_since_start=24,
            faults=dict(self.faults),
            model_dir=self.model_dir,
            model_sha256=self.classifier.sha256,
            model_version=self.classifier.version,
            labels=tuple(self.classifier.labels),
            unsure_threshold=self.policy.unsure_threshold,
            bins={
                "recycling": ("cardboard", "paper", "metal", "plastic"),
                "glass": ("glass",),
                "landfill": ("trash",),
            },
            fallback_bin="landfill",
            decide=self.policy.decide,
            spool=self.spool,
            started_at=time.time() - 3725,
            uptime_s=3725.0,
            telemetry_configured=self.telemetry[0],
            telemetry_connected=self.telemetry[1],
            class_bias=self.class_bias,
            site_head=self.site_head,
            site_examples=self.site_examples,
        )


class ManualClock:
    """Monotonic seconds that move only when told (the gate's limits, sessions)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
