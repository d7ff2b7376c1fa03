"""A hard cap on how long any lid stays open, independent of the sorter's state machine.

Every lid is wrapped in a :class:`GuardedLid` that notes when it was opened.
:meth:`LidGuard.check` drives closed any lid open longer than ``max_open_s``. The service
calls it on every loop iteration and every slice of a wait, and a timer thread calls it
every ``interval_s`` as well, so a lid is closed even when the loop itself is stuck (a hung
camera or classifier, a bug). The timer thread never feeds the systemd watchdog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from bin_daemon.hardware.ports import Clock, Lid

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 1.0
"""A lid command that holds the lock longer than this is assumed hung: the guard closes anyway."""


class GuardedLid:
    """A lid that remembers since when it has been open (on the guard's clock)."""

    def __init__(self, lid: Lid, guard: LidGuard) -> None:
        self._lid = lid
        self._guard = guard
        self._lock = threading.Lock()
        self.name = lid.name
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._lid.is_open

    def open(self) -> None:
        with self._lock:
            self.opened_at = self._guard.clock.monotonic()
            self._lid.open()

    def close(self) -> None:
        with self._lock:
            self._lid.close()
            self.opened_at = None

    def detach(self) -> None:
        with self._lock:
            self._lid.detach()

    def shutdown(self) -> None:
        self._lid.shutdown()

    def force_close(self) -> None:
        """Close even if another thread is stuck inside a command of this lid."""
        locked = self._lock.acquire(timeout=LOCK_TIMEOUT_S)
        try:
            self._lid.close()
            self.opened_at = None
        finally:
            if locked:
                self._lock.release()

    def __getattr__(self, name: str) -> Any:  # pin, move_to, ... of the wrapped lid
        return getattr(self._lid, name)


class LidGuard:
    def __init__(self, *, clock: Clock, max_open_s: float) -> None:
        if not max_open_s > 0:
            raise ValueError(f"max_open_s must be positive, got {max_open_s!r}")
        self.clock = clock
        self.max_open_s = max_open_s
        self.lids: dict[str, GuardedLid] = {}
        self.forced = 0
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wrap(self, lids: Mapping[str, Lid]) -> dict[str, GuardedLid]:
        self.lids = {name: GuardedLid(lid, self) for name, lid in lids.items()}
        return dict(self.lids)

    def check(self) -> list[str]:
        """Close every lid open longer than ``max_open_s``; the names of those closed."""
        now = self.clock.monotonic()
        closed = []
        for name, lid in self.lids.items():
            opened_at = lid.opened_at
            if opened_at is None or now - opened_at <= self.max_open_s:
                continue
            try:
                lid.force_close()
            except Exception as error:
                log.error("lid '%s': open too long and cannot be closed: %s", name, error)
                continue
            self.forced += 1
            closed.append(name)
            log.error(
                "lid '%s' was open %.1f s, longer than timing.max_open_s (%g s): driven closed",
                name,
                now - opened_at,
                self.max_open_s,
            )
        return closed

    # -- the timer -------------------------------------------------------------------------

    def start(self, interval_s: float = 0.5) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="lid-guard", daemon=True
        )
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.check()
            except Exception:  # pragma: no cover - the guard must never die
                log.exception("lid guard: check failed")
            self.ticks += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
