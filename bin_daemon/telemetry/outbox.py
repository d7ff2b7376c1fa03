"""The event log as the MQTT offline queue (the outbox).

Every item is in the event log before its lid opens; a row stays unpublished
(``published_at`` NULL) until the broker has acknowledged its event (PUBACK, QoS 1). The
outbox hands out unpublished rows in insertion order, at most ``max_inflight`` at a time, and
marks them published when their acknowledgements come. So a broker outage loses nothing
(the rows wait in the log) and a restart does not resend what was delivered (those rows are
marked).

Delivery is at least once: if the daemon dies after the broker acknowledged an event but
before the mark is written (or a power cut loses the mark), that event is sent again after
the restart. Every event carries its ``item_id``, so a consumer can drop duplicates.

Used from one thread only (the telemetry thread), with its own connection to the log.
"""

from __future__ import annotations

from collections.abc import Iterable

from bin_daemon.records.eventlog import EventLog, OutboxRow


class Outbox:
    def __init__(self, log: EventLog, *, max_inflight: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be 1 or more, got {max_inflight}")
        self.log = log
        self.max_inflight = max_inflight
        self._cursor = 0
        """The newest row id handed out."""
        self._inflight: dict[int, OutboxRow] = {}
        """Message id -> row, sent and not yet acknowledged."""
        self._before_start = log.last_id()
        """Rows up to here were written before this start: one still ``pending`` belongs to
        an item the daemon never finished (it died), and is sent as it is."""

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def next_rows(self) -> list[OutboxRow]:
        """Unpublished rows to send now, oldest first, within the in-flight limit.

        Stops at the item in hand (its row is ``pending`` until its lid has closed), so the
        events go out in order and each with its lid outcome.
        """
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return []
        ready = []
        for row in self.log.unpublished(after_id=self._cursor, limit=room):
            if row.lid == "pending" and row.id > self._before_start:
                break
            ready.append(row)
        return ready

    def sent(self, message_id: int, row: OutboxRow) -> None:
        """``row`` was handed to the client as message ``message_id``."""
        self._inflight[message_id] = row
        self._cursor = max(self._cursor, row.id)

    def acknowledged(self, message_ids: Iterable[int]) -> list[str]:
        """The broker acknowledged these messages: mark their rows; their item ids."""
        rows = [self._inflight.pop(mid) for mid in message_ids if mid in self._inflight]
        item_ids = [row.item_id for row in rows]
        if item_ids:
            self.log.mark_published(item_ids)
        return item_ids

    def backlog(self) -> int:
        """Events not yet acknowledged (in flight or waiting)."""
        return self.log.count_unpublished()
