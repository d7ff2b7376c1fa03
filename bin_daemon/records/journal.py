"""Logging and systemd notification. The only module importing ``systemd`` (python3-systemd).

Under systemd (a journal on stderr): one journal record per item with structured fields
(LABEL, CONFIDENCE, BIN, UNSURE, LATENCY_MS, MODEL, ...) and a readable MESSAGE; daemon
messages go to the journal too. Elsewhere: readable item lines on stdout, messages on stderr.
sd_notify uses ``systemd.daemon.notify``, or the socket protocol directly when the module is
missing; without NOTIFY_SOCKET it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, TextIO

from bin_daemon.records.events import SortEvent

try:  # pragma: no cover - depends on the machine
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover
    _sd_daemon = None
    _sd_journal = None

SYSLOG_IDENTIFIER = "bin-daemon"


def journal_available() -> bool:
    return _sd_journal is not None


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal (JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        device, inode = (int(x) for x in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def use_journal(setting: str) -> bool:
    if setting == "no" or not journal_available():
        return False
    return setting == "yes" or stderr_is_journal()


def setup_logging(level: str = "info", *, journal: bool = False) -> None:
    """Root logging: journal handler or plain ``bin-daemon: message`` lines on stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bin_daemon", False):
            root.removeHandler(handler)
    handler: logging.Handler
    if journal and _sd_journal is not None:
        handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bin-daemon: %(levelname)s: %(message)s"))
    handler._bin_daemon = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # gpiozero's PWMSoftwareFallback etc. reach the log


def journal_fields(event: SortEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ITEM_ID": event.item_id,
        "LABEL": event.label or "",
        "CONFIDENCE": "" if event.confidence is None else f"{event.confidence:.4f}",
        "BIN": event.bin,
        "UNSURE": int(event.unsure),
        "LATENCY_MS": f"{event.latency_ms.get('total', 0):.1f}",
        "CAPTURE_MS": f"{event.latency_ms.get('capture', 0):.1f}",
        "CLASSIFY_MS": f"{event.latency_ms.get('classify', 0):.1f}",
        "MODEL": event.model,
        "FRAME_SOURCE": str(event.frame_source),
        "LID": event.lid,
        "SITE": int(event.site),
        "EVENT_JSON": event.to_json(),
    }
    if event.error:
        fields["ERROR"] = event.error
    return fields


class ItemReporter:
    """Reports each item: a journal record with fields, or one line on ``stream``."""

    def __init__(self, *, journal: bool, stream: TextIO | None = None) -> None:
        self.journal = journal and _sd_journal is not None
        self.stream = stream if stream is not None else sys.stdout

    def __call__(self, event: SortEvent) -> None:
        line = event.human_line()
        if self.journal:
            priority = 4 if event.error else 6  # warning / info
            _sd_journal.send(  # type: ignore[union-attr]
                line,
                PRIORITY=priority,
                SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                **journal_fields(event),
            )
        else:
            print(line, file=self.stream, flush=True)


class Notifier:
    """sd_notify: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1. No-op without NOTIFY_SOCKET."""

    def __init__(self, send: Callable[[str], bool] | None = None) -> None:
        self._send = send or notify

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self, status: str = "") -> None:
        self._send("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def notify(state: str) -> bool:
    """Send one sd_notify message; False when there is nowhere to send it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if _sd_daemon is not None:
        return bool(_sd_daemon.notify(state))
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of WATCHDOG_USEC (how often to send WATCHDOG=1), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
