"""``bin-daemon fleet watch``: what the fleet's messages say, as a table (pure; no MQTT)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bin_daemon.telemetry.topics import parse_topic


@dataclass
class BinView:
    bin_id: str
    state: str = "?"
    last_item: str = "-"
    last_ts: str = ""
    items: int = 0
    """From the metrics when there are any, else the events seen."""
    unsure_rate: float | None = None
    model: str = ""
    rollout: str = ""
    events_seen: int = 0
    unsure_seen: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


class FleetView:
    def __init__(self) -> None:
        self.bins: dict[str, BinView] = {}

    def update(self, topic: str, payload: bytes) -> bool:
        """Take one message; False if it is not a fleet message this view knows."""
        parsed = parse_topic(topic)
        if parsed is None:
            return False
        bin_id, kind = parsed
        view = self.bins.setdefault(bin_id, BinView(bin_id))
        if kind == "status":
            view.state = payload.decode("utf-8", "replace").strip() or "?"
        elif kind == "status/model":
            report = _json(payload)
            if isinstance(report, dict):
                sha = str(report.get("sha256") or "")[:12]
                view.rollout = f"{report.get('result', '?')} {sha}".strip()
        elif kind == "events":
            event = _json(payload)
            if isinstance(event, dict):
                view.events_seen += 1
                view.unsure_seen += int(bool(event.get("unsure")))
                view.last_item = f"{event.get('label') or '-'} -> {event.get('bin', '?')}"
                view.last_ts = str(event.get("ts", ""))
                view.model = str(event.get("model", view.model))
                if not view.metrics:
                    view.items = view.events_seen
                    view.unsure_rate = view.unsure_seen / view.events_seen
        elif kind == "metrics":
            metrics = _json(payload)
            if isinstance(metrics, dict):
                view.metrics = metrics
                view.items = int(metrics.get("items") or 0)
                view.unsure_rate = metrics.get("unsure_rate")
                view.model = str(metrics.get("model") or view.model)
                if metrics.get("last_item_ts") and not view.events_seen:
                    view.last_ts = str(metrics["last_item_ts"])
                    view.last_item = str(metrics.get("last_item") or view.last_item)
        return True

    def render(self) -> str:
        header = (
            f"{'bin':<20} {'status':<8} {'items':>7} {'unsure':>6}  {'model':<12}  "
            f"{'last item':<24} {'at (UTC)':<24} roll-out"
        )
        lines = [header]
        for view in sorted(self.bins.values(), key=lambda v: v.bin_id):
            rate = "-" if view.unsure_rate is None else f"{view.unsure_rate:.0%}"
            lines.append(
                f"{view.bin_id:<20} {view.state:<8} {view.items:>7} {rate:>6}  "
                f"{view.model[:12]:<12}  {view.last_item:<24} {view.last_ts:<24} {view.rollout}"
            )
        online = sum(v.state == "online" for v in self.bins.values())
        lines.append(f"{len(self.bins)} bins, {online} online")
        return "\n".join(line.rstrip() for line in lines)
