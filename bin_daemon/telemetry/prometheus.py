"""The Prometheus node_exporter textfile: the metrics snapshot as ``bin_daemon_*`` series.

The text is ``prometheus_client``'s own exposition (the only module importing it), from a
registry of its own holding one collector that turns a snapshot into metric families, so
values are written exactly (``repr`` of the float: a counter or the uptime never loses
digits, unlike ``{:g}``'s six) and types are Prometheus' own: counters, gauges, and the
latency as a summary (quantiles over the last items, ``_sum``/``_count`` over all).

Written atomically by :func:`write_textfile` (a temporary file in the same folder, fsynced,
mode 0644 for node_exporter's user, then ``os.replace``). ``prometheus_client``'s
``write_to_textfile`` does the rename but neither the fsync nor the mode, which the service's
umask would otherwise decide. Counters count since the daemon started (``rate()`` copes with
the reset at a restart).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bin_daemon.errors import BinDaemonError

PREFIX = "bin_daemon_"


def _counter(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
    family = CounterMetricFamily(PREFIX + name, help_text, labels=labels)
    for sample_labels, value in samples:
        family.add_metric([sample_labels[key] for key in labels], value)
    return family


def _gauge(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
    family = GaugeMetricFamily(PREFIX + name, help_text, labels=labels)
    for sample_labels, value in samples:
        family.add_metric([sample_labels[key] for key in labels], value)
    return family


def _latency_summary(latency: dict[str, Any]) -> Metric:
    name = PREFIX + "latency_milliseconds"
    summary = Metric(
        name,
        "Trigger to decision in ms: quantiles over the last items, sum and count over all.",
        "summary",
    )
    summary.add_sample(name, {"quantile": "0.5"}, float(latency["p50"]))
    summary.add_sample(name, {"quantile": "0.95"}, float(latency["p95"]))
    if "count_all" in latency and "sum_all" in latency:
        summary.add_sample(name + "_sum", {}, float(latency["sum_all"]))
        summary.add_sample(name + "_count", {}, float(latency["count_all"]))
    return summary


class _Snapshot(Collector):
    """A collector serving one metrics snapshot (``runtime.Telemetry.metrics``)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter("items_total", "Items sorted since the daemon started.",
                       [({}, m.get("items", 0))])  # fmt: skip
        yield _counter("items_by_bin_total", "Items sorted into each bin.",
                       [({"bin": k}, v) for k, v in m.get("per_bin", {}).items()])  # fmt: skip
        yield _counter("items_by_label_total", "Items by the classifier's label.",
                       [({"label": k}, v) for k, v in m.get("per_label", {}).items()])  # fmt: skip
        yield _counter("unsure_total", "Items below the unsure threshold (fallback bin).",
                       [({}, m.get("unsure", 0))])  # fmt: skip
        yield _counter("errors_total", "Items with an error (camera, lid).",
                       [({}, m.get("errors", 0))])  # fmt: skip
        if m.get("latency_ms"):
            yield _latency_summary(m["latency_ms"])
        yield _gauge("uptime_seconds", "Seconds since the daemon started.",
                     [({}, m.get("uptime_s", 0))])  # fmt: skip
        if "cpu_temp_c" in m:
            yield _gauge("cpu_temperature_celsius", "SoC temperature.",
                         [({}, m["cpu_temp_c"])])  # fmt: skip
        if "throttled" in m:
            yield _gauge("throttled_flags", "vcgencmd get_throttled bit mask.",
                         [({}, int(m["throttled"], 16))])  # fmt: skip
        if m.get("model"):
            yield _gauge("model_info", "The running model (sha256 of the .tflite).",
                         [({"sha256": m["model"]}, 1)])  # fmt: skip
        if "mqtt_connected" in m:
            yield _gauge("mqtt_connected", "1 while connected to the MQTT broker.",
                         [({}, int(bool(m["mqtt_connected"])))])  # fmt: skip
        if m.get("backlog") is not None:
            yield _gauge("mqtt_backlog_events", "Events not yet acknowledged by the broker.",
                         [({}, m["backlog"])])  # fmt: skip
        levels = {k: v for k, v in (m.get("fill_percent") or {}).items() if v is not None}
        if levels:
            yield _gauge("fill_percent", "How full each bin is (0-100), by its fill sensor.",
                         [({"bin": k}, v) for k, v in levels.items()])  # fmt: skip
        if m.get("fill_state"):
            yield _gauge("bin_full", "1 while a bin is full (its items go to its overflow).",
                         [({"bin": k}, int(v == "full"))
                          for k, v in m["fill_state"].items()])  # fmt: skip


def render(metrics: dict[str, Any]) -> str:
    """The text exposition format for a metrics snapshot (``runtime.Telemetry.metrics``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry).decode("utf-8")


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
