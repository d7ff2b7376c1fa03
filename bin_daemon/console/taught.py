"""The Taught page's side: what the site store holds, as the console shows it, and removing
an example that should not be there.

The console keeps its own connection to the store (SQLite in WAL mode: it reads while the
loop writes), opened at the first request that finds the file, as ``bin-daemon site`` opens
it from another process. A removal moves the store's change counter, so the sorting loop
refits its head between items, within a second (``loop/site_link.py``). The event log keeps
the person's label: removing an example only stops the bin from learning from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from bin_daemon.errors import BinDaemonError
from bin_daemon.site.store import SiteStore

log = logging.getLogger(__name__)


class TaughtExample(BaseModel):
    id: int
    label: str
    source: str
    """``item:<id>`` (a spooled frame: a correction or ``site add --item``) or ``file:<path>``."""
    item_id: str | None
    added_at: str
    image_url: str


class TaughtLabel(BaseModel):
    label: str
    count: int
    bin: str | None
    """The bin the label is sorted into; None: in no bin (its items go to the fallback bin)."""
    new: bool
    """A label the model does not know: the site head learns it from these examples alone."""


class TaughtList(BaseModel):
    enabled: bool
    """False: site learning is off (``site.enabled``), nothing is taught or applied."""
    store: str
    total: int
    labels: list[TaughtLabel]
    examples: list[TaughtExample]
    """Newest first, at most the ``limit`` asked for."""


class RemovedExample(BaseModel):
    id: int
    label: str
    remaining: int
    """Examples of that label left in the store."""


class Taught:
    """The site store seen from the console (``path`` None: site learning is off)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._opened: SiteStore | None = None
        self._lock = threading.Lock()  # one request at a time on the one connection

    @contextmanager
    def _store(self) -> Iterator[SiteStore | None]:
        with self._lock:
            if self._opened is None and self.path is not None and self.path.exists():
                try:  # (a page view never creates the file)
                    self._opened = SiteStore(self.path)
                except BinDaemonError as error:
                    raise TaughtError(503, str(error)) from None
            try:
                yield self._opened
            except TaughtError:
                raise
            except BinDaemonError as error:  # opened again at the next request
                self._close()
                raise TaughtError(503, str(error)) from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def list(
        self, bins: Mapping[str, Sequence[str]], model_labels: Sequence[str], limit: int = 60
    ) -> TaughtList:
        bin_for = {label: name for name, labels in bins.items() for label in labels}
        with self._store() as store:
            examples = store.examples() if store is not None else []
        counts: dict[str, int] = {}
        for example in examples:
            counts[example.label] = counts.get(example.label, 0) + 1
        newest = sorted(examples, key=lambda e: e.id, reverse=True)[:limit]
        return TaughtList(
            enabled=self.path is not None,
            store=str(self.path or ""),
            total=len(examples),
            labels=[
                TaughtLabel(
                    label=label, count=n, bin=bin_for.get(label), new=label not in model_labels
                )
                for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            examples=[
                TaughtExample(
                    id=e.id,
                    label=e.label,
                    source=e.source,
                    item_id=e.item_id,
                    added_at=e.added_at,
                    image_url=f"/taught-frames/{e.id}.jpg",
                )
                for e in newest
            ],
        )

    def jpeg(self, example_id: int) -> bytes | None:
        with self._store() as store:
            return store.jpeg(example_id) if store is not None else None

    def remove(self, example_id: int) -> RemovedExample:
        with self._store() as store:
            found = [e for e in store.examples() if e.id == example_id] if store is not None else []
            if store is None or not found or not store.remove_id(example_id):
                raise TaughtError(404, f"no site example {example_id}")
            label = found[0].label
            remaining = store.counts().get(label, 0)
        log.info(
            "console: site example %d (%r, %s) removed by a person; %d of that label left",
            example_id,
            label,
            found[0].source,
            remaining,
        )
        return RemovedExample(id=example_id, label=label, remaining=remaining)


class TaughtError(BinDaemonError):
    """Refused: ``status`` is the HTTP status (the console turns it into a ConsoleError)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
