"""Opening a SQLite file the way every record of the bin needs it: durable and shared.

WAL mode (readers never block the writer: the console and the CLI read while the daemon
writes), ``synchronous=FULL`` (a statement that returned survives ``kill -9`` and power
loss), autocommit (each statement its own transaction unless the caller says BEGIN), and a
busy timeout for the moments another process holds the write lock. A file written by a
newer version of the program is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_durable(path: Path, *, schema_version: int, busy_timeout_ms: int) -> sqlite3.Connection:
    """The connection, its folder created; :class:`sqlite3.Error` or :class:`OSError` if the
    file cannot be opened, is not in WAL mode, or has a newer ``user_version``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL not supported here")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > schema_version:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this program's {schema_version}"
            )
    except sqlite3.Error:
        db.close()
        raise
    return db
