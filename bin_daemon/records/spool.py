"""Frames kept for retraining: ``<item_id>.jpg`` + ``<item_id>.json`` under a size quota."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from bin_daemon.model import preprocess
from bin_daemon.records.events import SortEvent

log = logging.getLogger(__name__)

MODES = ("none", "unsure", "all")

ITEM_ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{9}Z-[0-9A-Za-z]{1,32}-[0-9]{4,}")
"""What an item id looks like (``sorter._item_id``): the only names the spool reads back."""


class Spool:
    """Saves frames of ``unsure`` (or ``all``, or no) items; deletes the oldest beyond the quota.

    If the folder cannot be written, the spool disables itself with one warning: sorting
    goes on without it.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        save: str = "unsure",
        quota_mb: float = 200,
        jpeg_quality: int = 90,
    ) -> None:
        if save not in MODES:
            raise ValueError(f"save must be one of {', '.join(MODES)}, got {save!r}")
        if quota_mb <= 0:
            raise ValueError(f"quota_mb must be positive, got {quota_mb}")
        self.directory = Path(directory)
        self.save = save
        self.quota_bytes = int(quota_mb * 1024 * 1024)
        self.jpeg_quality = jpeg_quality
        self.enabled = save != "none"
        self.saved = 0
        if self.enabled:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                if not os.access(self.directory, os.W_OK | os.X_OK):
                    raise PermissionError(f"{self.directory} is not writable")
            except OSError as error:
                self._disable(error)

    def wants(self, event: SortEvent) -> bool:
        return self.enabled and (self.save == "all" or (self.save == "unsure" and event.unsure))

    def maybe_save(self, event: SortEvent, rgb: np.ndarray | None) -> Path | None:
        """Save the frame and its event if the mode asks for it; the JPEG path or None."""
        if rgb is None or not self.wants(event):
            return None
        jpg = self.directory / f"{event.item_id}.jpg"
        meta = self.directory / f"{event.item_id}.json"
        try:
            jpg.write_bytes(preprocess.encode_jpeg(rgb, quality=self.jpeg_quality))
            meta.write_text(json.dumps(event.to_dict(), indent=1) + "\n", encoding="utf-8")
        except OSError as error:
            self._disable(error)
            return None
        self.saved += 1
        self.enforce_quota()
        return jpg

    def frame_path(self, item_id: str) -> Path | None:
        """The saved JPEG of ``item_id``, or None if it has none (or the id is malformed).

        The id is checked against :data:`ITEM_ID_PATTERN` before it becomes part of a path,
        so an id from a request or a command line can never reach outside the spool.
        """
        if not ITEM_ID_PATTERN.fullmatch(item_id):
            return None
        path = self.directory / f"{item_id}.jpg"
        return path if path.is_file() else None

    def enforce_quota(self) -> None:
        """Delete the oldest items (by name: item ids start with a UTC time) beyond the quota."""
        try:
            files = sorted(p for p in self.directory.iterdir() if p.suffix in (".jpg", ".json"))
            sizes = {p: p.stat().st_size for p in files}
        except OSError as error:
            log.warning("spool: cannot list %s (%s)", self.directory, error)
            return
        total = sum(sizes.values())
        stems = list(dict.fromkeys(p.stem for p in files))
        for stem in stems:
            if total <= self.quota_bytes:
                break
            for path in (p for p in files if p.stem == stem):
                try:
                    path.unlink()
                    total -= sizes[path]
                except OSError as error:
                    log.warning("spool: cannot delete %s (%s)", path, error)

    def _disable(self, error: OSError) -> None:
        self.enabled = False
        log.warning(
            "spool: cannot write to %s (%s); frames will not be saved, sorting goes on",
            self.directory,
            error.strerror or error,
        )
