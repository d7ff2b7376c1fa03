"""The real clock. (The fake one, which never sleeps, is in fakes.py.)"""

from __future__ import annotations

import threading
import time


class SystemClock:
    """time.monotonic / time.time; sleeps are interruptible by an Event (e.g. SIGTERM)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float, *, interrupt: threading.Event | None = None) -> bool:
        if seconds <= 0:
            return bool(interrupt and interrupt.is_set())
        if interrupt is None:
            time.sleep(seconds)
            return False
        return interrupt.wait(seconds)
