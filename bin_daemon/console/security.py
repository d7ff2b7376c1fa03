"""The console's gate, in plain Python: password, wrong-password limits, sessions, CSRF.

No web framework here (``app.py`` calls these), and time comes from an injected clock, so
every rule is tested without sleeping:

* the password is compared with :func:`hmac.compare_digest` on digests of equal length;
* wrong passwords are counted per client and in total over a sliding minute; past the limit
  every password attempt (even a right one) is refused until the window has room again;
* a browser session is a random token (the cookie) with its own random CSRF token, both
  expiring after ``session_s``; state-changing requests by cookie must echo the CSRF token;
* any state-changing request that a browser marks as coming from another site (``Origin``
  not this host, ``Sec-Fetch-Site: cross-site``) is refused, whatever its credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bin_daemon.errors import ConfigError

CREDENTIAL_NAME = "console_password"
MIN_PASSWORD_CHARS = 8
WINDOW_S = 60.0
"""Wrong passwords are counted over this sliding window."""
GLOBAL_FAILURES_FACTOR = 4
"""All clients together may get this many times the per-client limit wrong per window."""
MAX_SESSIONS = 64
"""The oldest session is dropped beyond this (bounded memory whatever logs in)."""


def read_password(path: Path | None, credentials_dir: str | None) -> str:
    """The console password: ``path``'s first line, else the systemd credential.

    :class:`ConfigError` naming the file when there is none, it cannot be read, or it is too
    short to be a password.
    """
    if path is None:
        if not credentials_dir:
            raise ConfigError(
                "console: no password: set console.password_file, or load the systemd "
                f"credential {CREDENTIAL_NAME} (LoadCredential=, "
                "systemd/bin-daemon.service.d/console.conf.example)"
            )
        path = Path(credentials_dir) / CREDENTIAL_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: console password file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the console password ({error})") from None
    password = lines[0].strip() if lines else ""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(
            f"{path}: the console password must be at least {MIN_PASSWORD_CHARS} characters "
            "on the first line"
        )
    return password


class FailureLimiter:
    """At most ``limit`` failures per ``window_s`` (sliding); then refuse until there is room."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: dict[str, deque[float]] = {}

    def wait_s(self, key: str) -> float:
        """0 if ``key`` may try now, else the seconds until it may."""
        times = self._trim(key)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window_s - self._clock())

    def fail(self, key: str) -> None:
        self._trim(key).append(self._clock())

    def _trim(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._times[key]
            return self._times.setdefault(key, deque())
        return times

    def forget_idle(self) -> None:
        """Drop clients with no failure in the window (bounded memory)."""
        for key in list(self._times):
            self._trim(key)
            if not self._times.get(key):
                self._times.pop(key, None)


class RequestBudget:
    """A token bucket: ``rate_per_s`` requests per second on average, ``burst`` at once.

    The console's pages and API share one budget, so no client (nor all of them together)
    can keep the daemon's process busy with requests: the sorting loop shares its CPU.
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float]) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if a request may go now (it is counted), else the seconds until one may."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate_per_s


@dataclass
class Session:
    token: str
    csrf: str
    expires_at: float


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry_after_s: float = 0.0
    """Over the limit: no attempt is checked for this long."""


class Gate:
    """The password, the limits on wrong ones, and the browser sessions (thread-safe)."""

    def __init__(
        self,
        password: str,
        *,
        session_s: float,
        max_failures: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._digest = hashlib.sha256(password.encode("utf-8")).digest()
        self.session_s = session_s
        self._clock = clock
        self._per_client = FailureLimiter(max_failures, WINDOW_S, clock)
        self._everyone = FailureLimiter(max_failures * GLOBAL_FAILURES_FACTOR, WINDOW_S, clock)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    # -- passwords -----------------------------------------------------------------------

    def matches(self, candidate: str) -> bool:
        digest = hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._digest)

    def attempt(self, client: str, candidate: str) -> Verdict:
        """Check a password from ``client`` (its address), counting it if wrong."""
        with self._lock:
            return self._attempt(client, candidate)

    def _attempt(self, client: str, candidate: str) -> Verdict:
        wait = max(self._per_client.wait_s(client), self._everyone.wait_s("*"))
        if wait > 0:
            return Verdict(False, retry_after_s=wait)
        if self.matches(candidate):
            return Verdict(True)
        self._per_client.fail(client)
        self._everyone.fail("*")
        self._per_client.forget_idle()
        return Verdict(False)

    # -- sessions ------------------------------------------------------------------------

    def open_session(self) -> Session:
        with self._lock:
            return self._open_session()

    def _open_session(self) -> Session:
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.expires_at)
            del self._sessions[oldest.token]
        session = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.session_s,
        )
        self._sessions[session.token] = session
        return session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (unknown or expired)."""
        if not token:
            return None
        with self._lock:
            self._expire()
            for known, session in list(self._sessions.items()):
                if hmac.compare_digest(known.encode(), token.encode("utf-8", "replace")):
                    return session
        return None

    def close_session(self, token: str | None) -> None:
        session = self.session(token)
        if session is not None:
            with self._lock:
                self._sessions.pop(session.token, None)

    def _expire(self) -> None:
        now = self._clock()
        for token, session in list(self._sessions.items()):
            if session.expires_at <= now:
                del self._sessions[token]


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(
        session.csrf.encode(), str(token).encode("utf-8", "replace")
    )


def same_origin(origin: str | None, host: str | None, fetch_site: str | None) -> bool:
    """False when a browser says a request comes from another site.

    ``Origin`` (sent by browsers on POST) must name this ``Host``; ``Sec-Fetch-Site`` must
    not be ``cross-site`` or ``same-site``. Requests without either header (curl, scripts)
    pass: they carry no ambient browser credentials.
    """
    if fetch_site is not None and fetch_site.lower() in ("cross-site", "same-site"):
        return False
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a local path only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
