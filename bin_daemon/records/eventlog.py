"""The local event log: every decision, durable across ``kill -9`` and power loss.

SQLite (stdlib ``sqlite3``) in WAL mode, one row per item, ``item_id`` UNIQUE:

* A decision is inserted *before* its lid opens, with ``synchronous=FULL``: the commit is
  fsynced, so once a lid moves its decision survives a power cut. The row's ``lid`` is
  ``pending`` until the item is finished.
* When the item is finished its row is updated (the lid outcome, the full record) with
  ``synchronous=NORMAL``: that survives a crash of the process (the WAL is in the page
  cache) but a power cut may roll it back to ``pending``; the next FULL commit makes it
  durable too. One fsync per item keeps a Pi's SD card cheap; a decision is never lost.
* Inserting an ``item_id`` that is already there updates that row instead: a replay can
  never duplicate an item.

``event_json`` holds exactly what ``run --events`` writes for the item (one JSON line), so
``bin-daemon events --json`` and ``--events`` files are interchangeable. ``published_at``
is NULL until a publisher (the MQTT offline queue) marks the row as sent.

A person can correct a decision (the web console's review page): ``corrected_label`` and
``corrected_at`` are set beside the model's own ``label``, which stays as it was; readers
add both to the record when they are set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bin_daemon.errors import BinDaemonError
from bin_daemon.records.events import SortEvent, iso_utc
from bin_daemon.records.sqlite import open_durable

log = logging.getLogger(__name__)

FILE_NAME = "events.sqlite3"
SCHEMA_VERSION = 2
"""2: corrected_label and corrected_at (added to a version 1 file when it is opened)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id           INTEGER PRIMARY KEY,          -- insertion order
    item_id      TEXT    NOT NULL UNIQUE,      -- <UTC time>-<run id>-<seq>, unique across runs
    ts           TEXT    NOT NULL,             -- trigger time, ISO 8601 UTC (sorts as text)
    label        TEXT,                         -- NULL: not classified (camera or image error)
    confidence   REAL,
    bin          TEXT    NOT NULL,
    unsure       INTEGER NOT NULL,
    model        TEXT    NOT NULL,             -- sha256 of the model file
    lid          TEXT    NOT NULL,             -- pending | completed | hold cut short ... | failed
    error        TEXT,
    event_json   TEXT    NOT NULL,             -- the record, as `run --events` writes it
    recorded_at  TEXT    NOT NULL,             -- when the row was last written
    published_at TEXT,                         -- NULL until a publisher (MQTT) has sent it
    corrected_label TEXT,                      -- NULL unless a person corrected the label
    corrected_at TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_unpublished ON events (id) WHERE published_at IS NULL;
"""

_UPSERT = """
INSERT INTO events (item_id, ts, label, confidence, bin, unsure, model, lid, error,
                    event_json, recorded_at)
VALUES (:item_id, :ts, :label, :confidence, :bin, :unsure, :model, :lid, :error,
        :event_json, :recorded_at)
ON CONFLICT (item_id) DO UPDATE SET
    label = excluded.label, confidence = excluded.confidence, bin = excluded.bin,
    unsure = excluded.unsure, model = excluded.model, lid = excluded.lid,
    error = excluded.error, event_json = excluded.event_json,
    recorded_at = excluded.recorded_at
"""


def default_path() -> Path:
    """``$STATE_DIRECTORY/events.sqlite3`` under systemd, else the user's state folder."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / FILE_NAME
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "bin-daemon" / FILE_NAME


SERVICE_LOG = Path("/var/lib/bin-daemon") / FILE_NAME
"""The installed service's log (StateDirectory=bin-daemon)."""


def path_to_read(configured: Path | None) -> Path:
    """The log ``bin-daemon events`` reads: the configured path; else, outside systemd, the
    installed service's log when there is one (an admin's shell has no $STATE_DIRECTORY)."""
    if configured is not None:
        return configured
    if not os.environ.get("STATE_DIRECTORY") and SERVICE_LOG.exists():
        return SERVICE_LOG
    return default_path()


@dataclass(frozen=True)
class OutboxRow:
    """A row a publisher has still to send: ``event_json`` is the record to publish."""

    id: int
    item_id: str
    lid: str
    event_json: str


def _now_iso() -> str:
    return iso_utc(datetime.now(UTC).timestamp())


class EventLog:
    """The SQLite event log. ``record_decision`` before the lid opens, ``record`` after."""

    def __init__(self, path: str | Path, *, keep_days: float = 0) -> None:
        self.path = Path(path)
        self.keep_days = keep_days
        try:
            self._db = open_durable(self.path, schema_version=SCHEMA_VERSION, busy_timeout_ms=2000)
            self._db.executescript(SCHEMA)
            for column in _CORRECTION_COLUMNS - _columns(self._db):  # a version 1 file
                self._db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as error:
            raise BinDaemonError(f"{self.path}: cannot open the event log ({error})") from error
        self._synchronous = "FULL"
        self.prune()

    # -- writing ---------------------------------------------------------------------------

    def record_decision(self, event: SortEvent) -> None:
        """The decision, before the lid opens: fsynced (survives a power cut)."""
        self._write(event, synchronous="FULL")

    def record(self, event: SortEvent) -> None:
        """The finished item (lid outcome): survives a crash; fsynced by the next decision."""
        self._write(event, synchronous="NORMAL")

    __call__ = record  # an event sink like the others

    def _write(self, event: SortEvent, *, synchronous: str) -> None:
        try:
            if synchronous != self._synchronous:
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            self._db.execute(_UPSERT, _row(event))
        except sqlite3.Error as error:  # disk full, read-only, I/O error
            raise BinDaemonError(f"{self.path}: cannot write the event log ({error})") from error

    def mark_published(self, item_ids: list[str], when: str | None = None) -> None:
        """For a publisher: these rows have been sent (and acknowledged).

        Written with ``synchronous=NORMAL``: a mark survives a crash of the process; a power
        cut may lose the last marks, and those events are then sent once more.
        """
        stamp = when or _now_iso()
        try:
            if self._synchronous != "NORMAL":
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._synchronous = "NORMAL"
            with self._db:
                self._db.executemany(
                    "UPDATE events SET published_at = ? WHERE item_id = ?",
                    [(stamp, item_id) for item_id in item_ids],
                )
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot write the event log ({error})") from error

    # -- the outbox (rows not yet published) -------------------------------------------------

    def unpublished(self, *, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Rows not marked published, in insertion order, from after row ``after_id``."""
        try:
            found = self._db.execute(
                "SELECT id, item_id, lid, event_json FROM events "
                "WHERE published_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the event log ({error})") from error
        return [OutboxRow(*row) for row in found]

    def count_unpublished(self) -> int:
        try:
            query = "SELECT count(*) FROM events WHERE published_at IS NULL"
            return int(self._db.execute(query).fetchone()[0])
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the event log ({error})") from error

    def last_id(self) -> int:
        """The newest row's id (0 when empty)."""
        try:
            return int(self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the event log ({error})") from error

    def prune(self) -> int:
        """Delete rows older than ``keep_days`` (0: keep everything). The number deleted.

        Age counts back from the newest row or now, whichever is earlier: a clock that jumps
        ahead (a Pi without a real-time clock) cannot wipe the log.
        """
        if not self.keep_days:
            return 0
        try:
            newest = self._db.execute("SELECT max(ts) FROM events").fetchone()[0]
            now = iso_utc(datetime.now(UTC).timestamp())
            reference = datetime.fromisoformat(min(now, newest or now).replace("Z", "+00:00"))
            cutoff = iso_utc((reference - timedelta(days=self.keep_days)).timestamp())
            deleted = self._db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
        except sqlite3.Error as error:
            log.warning("event log: could not delete old rows (%s)", error)
            return 0
        if deleted:
            log.info("event log: deleted %d items older than %g days", deleted, self.keep_days)
        return deleted

    # -- corrections and queries (the web console) --------------------------------------

    def record_correction(self, item_id: str, label: str) -> None:
        """A person's label for an item: kept beside the model's, which is not changed.

        Fsynced (a person's work is not redone). :class:`UnknownItemError` if no row has
        ``item_id``. A second correction replaces the first.
        """
        try:
            if self._synchronous != "FULL":
                self._db.execute("PRAGMA synchronous=FULL")
                self._synchronous = "FULL"
            changed = self._db.execute(
                "UPDATE events SET corrected_label = ?, corrected_at = ? WHERE item_id = ?",
                (label, _now_iso(), item_id),
            ).rowcount
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot write the event log ({error})") from error
        if not changed:
            raise UnknownItemError(f"no item {item_id} in the event log {self.path}")

    def recent(
        self, *, limit: int = 50, since: str | None = None, unsure_only: bool = False
    ) -> list[dict[str, Any]]:
        """The newest records first (as :func:`read_events` gives them), at most ``limit``."""
        query = f"SELECT {_RECORD_COLUMNS} FROM events"
        clauses: list[str] = []
        args: list[Any] = []
        if since is not None:
            clauses.append("ts >= ?")
            args.append(since)
        if unsure_only:
            clauses.append("unsure = 1")
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY ts DESC, id DESC LIMIT ?"
        return [_record(*row) for row in self._read(query, (*args, limit))]

    def records_after(
        self, after_id: int, *, since: str | None = None, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """(row id, record) in insertion order after row ``after_id``: a long export in pages."""
        query = f"SELECT id, {_RECORD_COLUMNS} FROM events WHERE id > ?"
        args: tuple[Any, ...] = (after_id,)
        if since is not None:
            query += " AND ts >= ?"
            args += (since,)
        rows = self._read(query + " ORDER BY id LIMIT ?", (*args, limit))
        return [(row[0], _record(*row[1:])) for row in rows]

    def find(self, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The records of these items that are in the log, by item id."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {_RECORD_COLUMNS} FROM events WHERE item_id IN ({marks})"
            for row in self._read(query, tuple(chunk)):
                record = _record(*row)
                found[record["item_id"]] = record
        return found

    def counts_by_bin(self, *, since: str) -> dict[str, int]:
        """Items per bin from ``since`` (ISO UTC) on."""
        query = "SELECT bin, count(*) FROM events WHERE ts >= ? GROUP BY bin"
        return {name: int(n) for name, n in self._read(query, (since,))}

    def count_unsure(self, *, since: str) -> int:
        """Unsure items from ``since`` (ISO UTC) on."""
        return int(
            self._read("SELECT count(*) FROM events WHERE ts >= ? AND unsure = 1", (since,))[0][0]
        )

    def corrected_labels(self) -> list[str]:
        """Every label people have given, most used first."""
        query = (
            "SELECT corrected_label FROM events WHERE corrected_label IS NOT NULL "
            "GROUP BY corrected_label ORDER BY count(*) DESC, corrected_label"
        )
        return [label for (label,) in self._read(query, ())]

    def _read(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(query, args).fetchall()
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the event log ({error})") from error

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


class UnknownItemError(BinDaemonError):
    """A correction for an item the event log does not have."""


_CORRECTION_COLUMNS = frozenset({"corrected_label", "corrected_at"})
_RECORD_COLUMNS = "event_json, published_at, corrected_label, corrected_at"


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(events)")}


def _record(
    event_json: str,
    published_at: str | None,
    corrected_label: str | None = None,
    corrected_at: str | None = None,
) -> dict[str, Any]:
    """A row as a record: the event's JSON plus what was added later, when set."""
    record = json.loads(event_json)
    if published_at is not None:
        record["published_at"] = published_at
    if corrected_label is not None:
        record["corrected_label"] = corrected_label
        record["corrected_at"] = corrected_at
    return record


def _row(event: SortEvent) -> dict[str, Any]:
    return {
        "item_id": event.item_id,
        "ts": event.ts,
        "label": event.label,
        "confidence": event.confidence,
        "bin": event.bin,
        "unsure": int(event.unsure),
        "model": event.model,
        "lid": event.lid,
        "error": event.error,
        "event_json": event.to_json(),
        "recorded_at": _now_iso(),
    }


# -- reading (`bin-daemon events`) --------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """``--since``: an ISO time (``2026-11-24``, ``2026-11-24T08:00``, UTC unless an offset
    is given) or a relative one (``30s``, ``15m``, ``2h``, ``1d``, ``1w``). ISO UTC text."""
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        try:
            moment = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:  # an age beyond the calendar: every record
            return iso_utc(0.0)
        return iso_utc(max(moment.timestamp(), 0.0))
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO time (2026-11-24T08:00) or an age (30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso_utc(moment.timestamp())


def read_events(path: str | Path, *, since: str | None = None) -> Iterator[dict[str, Any]]:
    """The records in the log (oldest first), as ``run --events`` wrote them."""
    path = Path(path)
    if not path.is_file():
        raise BinDaemonError(f"{path}: no event log here (the daemon creates it on its first run)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise BinDaemonError(f"{path}: cannot open the event log ({error})") from error
    try:
        columns = _RECORD_COLUMNS
        if not _columns(db) >= _CORRECTION_COLUMNS:  # a version 1 file not opened since
            columns = "event_json, published_at"
        query = f"SELECT {columns} FROM events"
        args: tuple[str, ...] = ()
        if since is not None:
            query += " WHERE ts >= ?"
            args = (since,)
        for row in db.execute(query + " ORDER BY ts, id", args):
            yield _record(*row)
    except sqlite3.Error as error:
        raise BinDaemonError(f"{path}: cannot read the event log ({error})") from error
    finally:
        db.close()


def table_line(record: dict[str, Any]) -> str:
    """One readable row: time, item, label, confidence, bin, lid, error."""
    label = record.get("label") or "-"
    confidence = record.get("confidence")
    conf = f"{confidence:.2f}" if isinstance(confidence, int | float) else "-"
    unsure = "unsure" if record.get("unsure") else ""
    line = (
        f"{record.get('ts', ''):<24}  {record.get('item_id', ''):<34}  {label:<10} {conf:>4}  "
        f"{record.get('bin', ''):<10} {unsure:<6}  {record.get('lid', '')}"
    )
    if record.get("corrected_label"):
        line += f"  corrected: {record['corrected_label']}"
    if record.get("error"):
        line += f"  {record['error']}"
    return line.rstrip()


TABLE_HEADER = (
    f"{'time (UTC)':<24}  {'item':<34}  {'label':<10} {'conf':>4}  {'bin':<10} {'':<6}  lid"
)
