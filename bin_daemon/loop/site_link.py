"""The loop's side of site learning (``bin_daemon/site/``): which classifier sorts.

The site store is opened at start and its head fitted. Between items, at most every
``SITE_CHECK_EVERY_S``, the store's change counter is read (one tiny SQLite query) and the
head refitted when ``bin-daemon site add|remove`` changed it, so no restart or SIGHUP is
needed. Frames corrected on the web console arrive from the console's thread and are taught
to the store here, by the loop, between items: the model's interpreter is the loop's alone.
A SIGHUP or a roll-out that changes the model opens a new link state with ``open`` and
``replace``, which re-embeds the stored examples from their JPEGs with the new model.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bin_daemon.config import Config
from bin_daemon.errors import BinDaemonError
from bin_daemon.model.classifier import Classifier

log = logging.getLogger("bin_daemon")

SITE_CHECK_EVERY_S = 1.0
"""How often, between items, the site store's change counter is read."""


class SiteLink:
    """The running ``SiteClassifier`` (the model with the site head applied), kept fitted."""

    def __init__(self, *, monotonic: Callable[[], float], on_progress: Callable[[], None]) -> None:
        self.site: Any = None
        """bin_daemon.site.runtime.SiteClassifier, once ``replace`` has installed one."""
        self._monotonic = monotonic
        self._on_progress = on_progress  # fed while a refit or re-embedding runs
        self._checked = float("-inf")
        self._corrections: queue.SimpleQueue[tuple[str, str, Path]] = queue.SimpleQueue()

    def open(self, config: Config, classifier: Classifier) -> Any:
        """The classifier wrapped with the site store's head (fitted now). Without a store
        (site.enabled false, or it cannot be opened: logged) it is the model alone. The
        running one stays until ``replace``."""
        from bin_daemon.site.runtime import SiteClassifier
        from bin_daemon.site.store import SiteStore

        store = None
        if config.site.enabled:
            try:
                store = SiteStore(config.site_store_path(), quota_mb=config.site.quota_mb)
            except BinDaemonError as error:
                log.error("%s; sorting goes on with the model alone", error)
        site = SiteClassifier(classifier, store, on_progress=self._on_progress)
        site.refresh(force=True)
        log.info("%s", site.describe())
        return site

    @staticmethod
    def discard(site: Any) -> None:
        """Close a site classifier that ``open`` made but that will not run."""
        if site is not None and site.store is not None:
            site.store.close()

    def replace(self, site: Any) -> None:
        """Run ``site`` from now on; the old one's store is closed."""
        self.close()
        self.site = site
        self._checked = self._monotonic()

    def labels(self, site: Any = None) -> list[str]:
        """The labels the site store adds to the model's (of ``site``, else the running one)."""
        from bin_daemon.site.runtime import site_labels

        site = site or self.site
        return site_labels(site) if site is not None else []

    def refresh(self) -> bool:
        """Between items: refit the head if the store changed (read at most every
        ``SITE_CHECK_EVERY_S``). True when it was refitted: the policy's threshold may change."""
        now = self._monotonic()
        if self.site is None or now - self._checked < SITE_CHECK_EVERY_S:
            return False
        self._checked = now
        if not self.site.refresh():
            return False
        log.info("site store changed: %s (refit %.0f ms)", self.site.describe(), self.site.fit_ms)
        return True

    def queue_correction(self, item_id: str, label: str, frame: Path | None) -> None:
        """The console's correction hook, called from its thread: the frame is taught by the
        loop between items (``teach_corrections``)."""
        if frame is not None:
            self._corrections.put((item_id, label, frame))

    def teach_corrections(self) -> None:
        """Between items: add the frames corrected on the console to the site store (the
        head is refitted by the next ``refresh``, at once)."""
        while not self._corrections.empty():
            from bin_daemon.site.teach import teach

            item_id, label, frame = self._corrections.get_nowait()
            if self.site is None or self.site.store is None:
                log.warning(
                    "console: item %s labelled %r, but no site store is open", item_id, label
                )
                continue
            try:
                teach(self.site.store, self.site, label=label, rgb_or_path=frame, item_id=item_id)
            except BinDaemonError as error:
                log.warning("console: item %s: the site store did not take it: %s", item_id, error)
                continue
            self._checked = float("-inf")  # refit now, not in a second
            log.info("site store: item %s taught as %r (corrected on the console)", item_id, label)

    def close(self) -> None:
        self.discard(self.site)
