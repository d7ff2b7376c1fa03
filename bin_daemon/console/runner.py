"""Start and stop the web console inside the daemon: no web framework imported here.

:meth:`ConsoleRunner.start` (called by the service after READY=1) reads the password and binds
the socket in the caller's thread, so a wrong setting is one clear log line at once, and a
client may connect as soon as it returns (the socket listens; uvicorn accepts once it is up).
The web framework is imported and run in the console's own thread. A console that cannot start is
logged and left off: the bin goes on sorting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from bin_daemon.config import Config
from bin_daemon.console.security import Gate, read_password
from bin_daemon.console.state import Console, DaemonView, Hooks
from bin_daemon.errors import BinDaemonError

log = logging.getLogger(__name__)

STOP_WAIT_S = 3.0
STATUS_CACHE_S = 0.5
"""Status requests closer together than this share one snapshot."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; :class:`BinDaemonError` naming it if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=64)
    except OSError as error:
        if error.errno is not None and error.errno > 0:
            why = os.strerror(error.errno)
        else:  # getaddrinfo's negative codes
            why = "the host name does not resolve to an address of this machine"
        raise BinDaemonError(f"console: cannot listen on {host}:{port} ({why})") from None


class ConsoleRunner:
    def __init__(
        self,
        config: Config,
        view: Callable[[], DaemonView],
        *,
        hooks: Hooks | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._view = view
        self._hooks = hooks
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self.console: Console | None = None
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._stopping = threading.Event()

    def start(self) -> bool:
        """True if the console is starting; False (logged) if it cannot."""
        settings = self.config.console
        if settings.listen is None:
            return False
        host, port = settings.host_port()
        try:
            password = read_password(
                self.config.console_password_file(), self._environ.get("CREDENTIALS_DIRECTORY")
            )
            self._sock = bind(host, port)
        except BinDaemonError as error:
            log.error("%s; the web console is off, sorting goes on", error)
            return False
        self.port = self._sock.getsockname()[1]
        gate_options: dict[str, Any] = {"clock": self._clock} if self._clock else {}
        gate = Gate(
            password,
            session_s=settings.session_hours * 3600,
            max_failures=settings.max_login_failures,
            **gate_options,
        )
        self.console = Console(
            self._view,
            event_log_path=self.config.event_log_path(),
            hooks=self._hooks,
            recent_items=settings.recent_items,
            max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
            max_upload_pixels=int(settings.max_upload_megapixels * 1_000_000),
            status_cache_s=min(STATUS_CACHE_S, settings.refresh_s / 2),
        )
        console, sock = self.console, self._sock

        def target() -> None:
            try:
                from bin_daemon.console import app

                mqtt = self.config.telemetry.mqtt
                options = app.Settings(
                    refresh_s=settings.refresh_s,
                    max_requests_per_s=settings.max_requests_per_s,
                    bin_name=mqtt.bin_id if mqtt is not None else "bin-daemon",
                )
                web = app.create_app(console, gate, options)
                app.serve(sock, web, on_server=self._on_server)
            except BaseException as error:  # uvicorn raises SystemExit on startup errors
                log.error("console: the web server stopped: %s", error or type(error).__name__)

        self._thread = threading.Thread(target=target, name="console", daemon=True)
        self._thread.start()
        log.info("console: http://%s:%d/", host if ":" not in host else f"[{host}]", self.port)
        return True

    def _on_server(self, server: Any) -> None:
        self._server = server
        if self._stopping.is_set():
            server.should_exit = True

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("console: the web server did not stop within %.0f s", STOP_WAIT_S)
        if self._sock is not None:
            self._sock.close()
        if self.console is not None:
            self.console.close()
