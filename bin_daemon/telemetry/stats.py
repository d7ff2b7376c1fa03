"""Item statistics for the metrics: counts per bin and label, unsure rate, latency.

An event sink (``add``) called from the sorting loop; ``snapshot`` is read by the telemetry
thread, so both take a lock.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from typing import Any

from bin_daemon.records.events import SortEvent

LATENCY_WINDOW = 1000
"""Latency percentiles are over the last this many items."""


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class ItemStats:
    def __init__(self, *, window: int = LATENCY_WINDOW) -> None:
        self._lock = threading.Lock()
        self.items = 0
        self.unsure = 0
        self.errors = 0
        self.per_bin: Counter[str] = Counter()
        self.per_label: Counter[str] = Counter()
        self._latency_ms: deque[float] = deque(maxlen=window)
        self.latency_sum_ms = 0.0
        self.latency_count = 0
        """Over every item since the start (a Prometheus summary's _sum and _count)."""
        self.last_item_ts: str | None = None
        self.last_item: str | None = None
        """``label -> bin`` of the latest item (for a watcher that joins late)."""

    def add(self, event: SortEvent) -> None:
        with self._lock:
            self.items += 1
            self.unsure += int(event.unsure)
            self.errors += int(event.error is not None)
            self.per_bin[event.bin] += 1
            self.per_label[event.label or "none"] += 1
            total = event.latency_ms.get("total")
            if isinstance(total, int | float):
                self._latency_ms.append(float(total))
                self.latency_sum_ms += float(total)
                self.latency_count += 1
            self.last_item_ts = event.ts
            self.last_item = f"{event.label or '-'} -> {event.bin}"

    __call__ = add

    def snapshot(self) -> dict[str, Any]:
        """Counts since the start; latency (trigger to decision, ms) over the last items."""
        with self._lock:
            latency = list(self._latency_ms)
            p50, p95 = percentile(latency, 0.50), percentile(latency, 0.95)
            return {
                "items": self.items,
                "unsure": self.unsure,
                "errors": self.errors,
                "unsure_rate": round(self.unsure / self.items, 4) if self.items else None,
                "per_bin": dict(sorted(self.per_bin.items())),
                "per_label": dict(sorted(self.per_label.items())),
                "latency_ms": None
                if p50 is None
                else {
                    "p50": round(p50, 2),
                    "p95": round(p95 or p50, 2),
                    "n": len(latency),
                    "sum_all": round(self.latency_sum_ms, 3),
                    "count_all": self.latency_count,
                },
                "last_item_ts": self.last_item_ts,
                "last_item": self.last_item,
            }
