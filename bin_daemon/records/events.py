"""One record per item, and where records go (a JSON-lines file; the log is in journal.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bin_daemon.errors import BinDaemonError


@dataclass
class SortEvent:
    item_id: str
    ts: str
    """Trigger time, ISO 8601 UTC."""
    label: str | None
    confidence: float | None
    top: list[dict[str, Any]]
    """Top-3 [{"label": ..., "score": ...}], most probable first."""
    bin: str
    unsure: bool
    model: str
    """sha256 of the model file."""
    frame_source: str | int | None
    """The image path (fake camera) or the sensor timestamp in ns (Pi camera)."""
    latency_ms: dict[str, float]
    """capture, classify (preprocess included), preprocess, decide, total (trigger to
    decision), and trigger_to_lid (trigger to the lid's open command; absent if not opened)."""
    seq: int = 0
    reason: str = ""
    lid: str = "pending"
    """What the lid did: completed | hold cut short (stopping) | not opened (stopping) | failed."""
    error: str | None = None
    site: bool = False
    """The site store's head changed the model's decision (``extra["model_label"]`` then
    holds the model's own label)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def human_line(self) -> str:
        """One readable line, e.g. ``item 3  plastic  0.94 -> recycling  (capture 1 ms, ...)``."""
        if self.label is None:
            what = f"{'(no label)':<10} {'':>4}"
        else:
            what = f"{self.label:<10} {self.confidence:.2f}"
        mark = "  UNSURE" if self.unsure else ""
        if self.site:
            mark += f"  SITE (model: {self.extra.get('model_label', '?')})"
        lat = self.latency_ms
        detail = f"capture {lat.get('capture', 0):.0f} ms, classify {lat.get('classify', 0):.0f} ms"
        if self.error:
            detail += f"; {self.error}"
        if self.lid not in ("completed", "pending"):
            detail += f"; lid {self.lid}"
        line = f"item {self.seq:<3} {what} -> {self.bin:<10}{mark}  ({detail})"
        if isinstance(self.frame_source, str):
            line += f"  {Path(self.frame_source).name}"
        return line


def iso_utc(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonLinesSink:
    """Appends each event as one JSON line, flushed per item."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle: IO[str] | None = self.path.open("a", encoding="utf-8")
        except OSError as error:
            raise BinDaemonError(f"{self.path}: cannot open the events file ({error})") from error

    def __call__(self, event: SortEvent) -> None:
        if self._handle is None:
            return
        self._handle.write(event.to_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
