"""The Prometheus node_exporter textfile: the metrics snapshot as ``bin_daemon_*`` series.

Written atomically (a temporary file in the same folder, fsynced, then ``os.replace``), so
node_exporter never reads half a file. Counters count since the daemon started (Prometheus'
``rate()`` copes with the reset at a restart).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from bin_daemon.errors import BinDaemonError


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        full = f"bin_daemon_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {value:g}")


def render(metrics: dict[str, Any]) -> str:
    """The text exposition format for a metrics snapshot (``runtime.Telemetry.metrics``)."""
    out = _Writer()
    out.metric("items_total", "counter", "Items sorted since the daemon started.",
               [({}, metrics.get("items", 0))])  # fmt: skip
    out.metric("items_by_bin_total", "counter", "Items sorted into each bin.",
               [({"bin": k}, v) for k, v in metrics.get("per_bin", {}).items()])  # fmt: skip
    out.metric("items_by_label_total", "counter", "Items by the classifier's label.",
               [({"label": k}, v) for k, v in metrics.get("per_label", {}).items()])  # fmt: skip
    out.metric("unsure_total", "counter", "Items below the unsure threshold (fallback bin).",
               [({}, metrics.get("unsure", 0))])  # fmt: skip
    out.metric("errors_total", "counter", "Items with an error (camera, lid).",
               [({}, metrics.get("errors", 0))])  # fmt: skip
    latency = metrics.get("latency_ms")
    if latency:
        out.metric("latency_milliseconds", "gauge",
                   "Trigger to decision over the last items, by quantile.",
                   [({"quantile": "0.5"}, latency["p50"]),
                    ({"quantile": "0.95"}, latency["p95"])])  # fmt: skip
    out.metric("uptime_seconds", "gauge", "Seconds since the daemon started.",
               [({}, metrics.get("uptime_s", 0))])  # fmt: skip
    if "cpu_temp_c" in metrics:
        out.metric("cpu_temperature_celsius", "gauge", "SoC temperature.",
                   [({}, metrics["cpu_temp_c"])])  # fmt: skip
    if "throttled" in metrics:
        out.metric("throttled_flags", "gauge", "vcgencmd get_throttled bit mask.",
                   [({}, int(metrics["throttled"], 16))])  # fmt: skip
    if metrics.get("model"):
        out.metric("model_info", "gauge", "The running model (sha256 of the .tflite).",
                   [({"sha256": metrics["model"]}, 1)])  # fmt: skip
    if "mqtt_connected" in metrics:
        out.metric("mqtt_connected", "gauge", "1 while connected to the MQTT broker.",
                   [({}, int(bool(metrics["mqtt_connected"])))])  # fmt: skip
    if metrics.get("backlog") is not None:
        out.metric("mqtt_backlog_events", "gauge", "Events not yet acknowledged by the broker.",
                   [({}, metrics["backlog"])])  # fmt: skip
    return "\n".join(out.lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (same-folder temporary file + os.replace)."""
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise BinDaemonError(f"{path}: cannot write the Prometheus textfile ({error})") from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # node_exporter runs as another user
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise BinDaemonError(f"{path}: cannot write the Prometheus textfile ({error})") from error
