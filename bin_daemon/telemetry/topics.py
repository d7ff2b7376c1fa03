"""MQTT topic names (``smartbin/<bin_id>/...``) and status payloads."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "smartbin"
FLEET_ID = "all"
"""``smartbin/all/model``: a roll-out for every bin."""
ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True)
class Topics:
    bin_id: str

    def _topic(self, leaf: str) -> str:
        return f"{PREFIX}/{self.bin_id}/{leaf}"

    @property
    def status(self) -> str:
        """Retained ``online`` / ``offline`` (the last will)."""
        return self._topic("status")

    @property
    def status_model(self) -> str:
        """Retained JSON: the outcome of the latest model roll-out."""
        return self._topic("status/model")

    @property
    def events(self) -> str:
        """One JSON event per item, QoS 1 (the event log's record)."""
        return self._topic("events")

    @property
    def metrics(self) -> str:
        """Retained JSON every ``telemetry.metrics_interval_s``."""
        return self._topic("metrics")

    @property
    def model(self) -> str:
        """Retained roll-out request for this bin."""
        return self._topic("model")

    @property
    def fleet_model(self) -> str:
        """Retained roll-out request for every bin (a bin's own topic takes precedence)."""
        return f"{PREFIX}/{FLEET_ID}/model"


WATCH_TOPICS = (
    f"{PREFIX}/+/status",
    f"{PREFIX}/+/status/model",
    f"{PREFIX}/+/events",
    f"{PREFIX}/+/metrics",
)
"""What ``fleet watch`` subscribes to."""


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``smartbin/<bin_id>/<kind>`` -> (bin_id, kind), kind one of status, status/model,
    events, metrics; None for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] == FLEET_ID:
        return None
    kind = "/".join(parts[2:])
    if kind not in ("status", "status/model", "events", "metrics"):
        return None
    return parts[1], kind
