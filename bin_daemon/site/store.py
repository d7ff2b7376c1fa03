"""The site store: frames the people at this bin labelled, durable, under a size quota.

SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``, like the event log: an
example is acknowledged (``add`` returns its id, ``site add`` prints it) only after its
transaction is fsynced, so neither ``kill -9`` nor a power cut loses it, and a writer killed
mid-transaction leaves nothing half-written (SQLite rolls the transaction back).

One row per example: its label, where it came from (``item:<item id>`` for a spooled frame,
``file:<path>`` for an image file), when it was added, its JPEG, and its embedding with the
sha256 of the model that computed it. The JPEG is kept so that the embedding can be computed
again when the daemon runs another model (:meth:`SiteStore.stale` / :meth:`set_embedding`).

``generation`` (in the ``meta`` table) is a change counter: every add and remove increments
it in the same transaction, so a reader (the daemon, between items) learns that the examples
changed with one tiny query, whichever process changed them. Re-embedding does not count as
a change (the examples and labels are the same).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.records.events import iso_utc
from bin_daemon.records.sqlite import open_durable

FILE_NAME = "site.sqlite3"
SCHEMA_VERSION = 1
SERVICE_STATE_DIR = Path("/var/lib/bin-daemon")
"""The installed service's state folder (StateDirectory=bin-daemon)."""

LABEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""A label: 1-40 lower-case letters, digits, '_' or '-', starting with a letter or digit
(it becomes a folder name in ``site export`` and a key in the config's bins)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so `remove --id` is safe
    label        TEXT    NOT NULL,
    source       TEXT    NOT NULL,     -- item:<item id> | file:<path>
    item_id      TEXT,                 -- the spooled item, when it came from the spool
    added_at     TEXT    NOT NULL,     -- ISO 8601 UTC
    jpeg         BLOB    NOT NULL,
    model_sha256 TEXT    NOT NULL,     -- the model that computed `embedding`
    embedding    BLOB    NOT NULL,     -- float32 little-endian, `dim` values
    dim          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_label ON examples (label);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""


def check_label(label: str) -> str:
    """``label`` if it is a usable label, else :class:`BinDaemonError` saying what is expected."""
    if not label.strip():
        raise BinDaemonError("site: the label is empty (give --label, e.g. --label coffee_cup)")
    if not LABEL_PATTERN.fullmatch(label):
        raise BinDaemonError(
            f"site: label {label!r} is not usable: use 1-40 lower-case letters, digits, '_' or "
            "'-', starting with a letter or digit (e.g. coffee_cup)"
        )
    return label


def state_dir(*, for_cli: bool = False) -> Path:
    """``$STATE_DIRECTORY`` (under systemd), else the user's state folder.

    ``for_cli``: outside systemd, the installed service's folder when it exists (an admin's
    shell has no $STATE_DIRECTORY, and the daemon's store is the one to teach).
    """
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if for_cli and SERVICE_STATE_DIR.is_dir():
        return SERVICE_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "bin-daemon"


def default_path(*, for_cli: bool = False) -> Path:
    return state_dir(for_cli=for_cli) / FILE_NAME


@dataclass(frozen=True)
class Example:
    id: int
    label: str
    source: str
    item_id: str | None
    added_at: str
    model_sha256: str
    embedding: np.ndarray
    jpeg_bytes: int


def _storable_id(example_id: int) -> bool:
    """An id SQLite can hold (ids start at 1; a larger number is no example, not an error)."""
    return 0 < example_id < 2**63


def _now() -> str:
    return iso_utc(datetime.now(UTC).timestamp())


class SiteStore:
    """The examples in one SQLite file. Every method raises one :class:`BinDaemonError` line."""

    def __init__(self, path: str | Path, *, quota_mb: float = 50) -> None:
        if not quota_mb > 0:
            raise ValueError(f"quota_mb must be positive, got {quota_mb}")
        self.path = Path(path)
        self.quota_bytes = int(quota_mb * 1024 * 1024)
        try:
            self._db = open_durable(self.path, schema_version=SCHEMA_VERSION, busy_timeout_ms=5000)
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as error:
            raise BinDaemonError(f"{self.path}: cannot open the site store ({error})") from error

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot {what} ({error})") from error

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    def add(
        self,
        *,
        label: str,
        jpeg: bytes,
        embedding: np.ndarray,
        model_sha256: str,
        source: str,
        item_id: str | None = None,
        added_at: str | None = None,
    ) -> int:
        """Store one example; its id once it is fsynced. Refused beyond the quota.

        An item already in the store (the same ``item_id``) is replaced in the same transaction:
        an item's latest label is the one taught (a correction corrected again)."""
        check_label(label)
        vector = np.asarray(embedding, dtype="<f4").reshape(-1)
        if vector.size == 0 or not np.isfinite(vector).all():
            raise BinDaemonError(f"{source}: the embedding is empty or not finite; not stored")
        if not jpeg:
            raise BinDaemonError(f"{source}: no JPEG to store")
        blob = vector.tobytes()
        with self._transaction("add the example") as db:
            if item_id is not None:
                db.execute("DELETE FROM examples WHERE item_id = ?", (item_id,))
            used = self._used_bytes(db)
            if used + len(jpeg) + len(blob) > self.quota_bytes:
                raise BinDaemonError(
                    f"{self.path}: the site store is full ({used / 1e6:.1f} MB used of its "
                    f"quota {self.quota_bytes / 1024 / 1024:g} MB, site.quota_mb); remove "
                    "examples with `bin-daemon site remove` or raise the quota"
                )
            cursor = db.execute(
                "INSERT INTO examples (label, source, item_id, added_at, jpeg, model_sha256, "
                "embedding, dim) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (label, source, item_id, added_at or _now(), jpeg, model_sha256, blob, vector.size),
            )
            self._bump(db)
            new_id = cursor.lastrowid
        assert new_id is not None
        return int(new_id)

    def remove_label(self, label: str) -> int:
        """Delete every example of ``label``; how many."""
        with self._transaction("remove examples") as db:
            count = db.execute("DELETE FROM examples WHERE label = ?", (label,)).rowcount
            if count:
                self._bump(db)
        return int(count)

    def remove_id(self, example_id: int) -> bool:
        if not _storable_id(example_id):  # no such row can exist (and SQLite would refuse it)
            return False
        with self._transaction("remove the example") as db:
            count = db.execute("DELETE FROM examples WHERE id = ?", (example_id,)).rowcount
            if count:
                self._bump(db)
        return bool(count)

    def set_embedding(self, example_id: int, embedding: np.ndarray, model_sha256: str) -> None:
        """Replace one example's embedding (computed again with another model)."""
        vector = np.asarray(embedding, dtype="<f4").reshape(-1)
        with self._transaction("update an embedding") as db:
            db.execute(
                "UPDATE examples SET embedding = ?, dim = ?, model_sha256 = ? WHERE id = ?",
                (vector.tobytes(), vector.size, model_sha256, example_id),
            )

    # -- reading ---------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the site store ({error})") from error

    @staticmethod
    def _used_bytes(db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT coalesce(sum(length(jpeg) + length(embedding)), 0) FROM examples"
        ).fetchone()
        return int(row[0])

    def used_bytes(self) -> int:
        """The examples' JPEGs and embeddings, the part the quota counts."""
        try:
            return self._used_bytes(self._db)
        except sqlite3.Error as error:
            raise BinDaemonError(f"{self.path}: cannot read the site store ({error})") from error

    def generation(self) -> int:
        """The change counter: different after any add or remove, from any process."""
        return int(self._query("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    def counts(self) -> dict[str, int]:
        """Examples per label, by label."""
        rows = self._query("SELECT label, count(*) FROM examples GROUP BY label ORDER BY label")
        return {label: int(n) for label, n in rows}

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM examples")[0][0])

    def examples(self, *, label: str | None = None) -> list[Example]:
        """Every example (without its JPEG), oldest first."""
        sql = (
            "SELECT id, label, source, item_id, added_at, model_sha256, embedding, "
            "length(jpeg) FROM examples"
        )
        rows = self._query(sql + (" WHERE label = ?" if label else "") + " ORDER BY id",
                           (label,) if label else ())  # fmt: skip
        return [
            Example(
                id=row[0],
                label=row[1],
                source=row[2],
                item_id=row[3],
                added_at=row[4],
                model_sha256=row[5],
                embedding=np.frombuffer(row[6], dtype="<f4").astype(np.float32),
                jpeg_bytes=row[7],
            )
            for row in rows
        ]

    def stale(self, model_sha256: str) -> list[int]:
        """Ids of the examples whose embedding another model computed."""
        rows = self._query("SELECT id FROM examples WHERE model_sha256 != ? ORDER BY id",
                           (model_sha256,))  # fmt: skip
        return [int(row[0]) for row in rows]

    def jpeg(self, example_id: int) -> bytes | None:
        if not _storable_id(example_id):
            return None
        rows = self._query("SELECT jpeg FROM examples WHERE id = ?", (example_id,))
        return bytes(rows[0][0]) if rows else None

    def jpegs(self) -> Iterator[tuple[int, str, bytes]]:
        """(id, label, JPEG) of every example, oldest first, one at a time."""
        for (example_id,) in self._query("SELECT id FROM examples ORDER BY id"):
            row = self._query("SELECT label, jpeg FROM examples WHERE id = ?", (example_id,))
            if row:
                yield int(example_id), str(row[0][0]), bytes(row[0][1])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> SiteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_labels(path: Path) -> list[str]:
    """The labels a store at ``path`` holds, read-only; [] when there is no store."""
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise BinDaemonError(f"{path}: cannot open the site store ({error})") from error
    try:
        rows = db.execute("SELECT DISTINCT label FROM examples ORDER BY label").fetchall()
    except sqlite3.Error as error:
        raise BinDaemonError(f"{path}: cannot read the site store ({error})") from error
    finally:
        db.close()
    return [str(row[0]) for row in rows]
