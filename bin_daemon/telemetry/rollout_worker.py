"""The roll-out thread: one roll-out at a time, through the model store.

Messages arrive on MQTT's network thread (``offer``, which only records them); this thread
fetches the model, checks the message's sha256 against the ``.tflite`` and the folder's
signature against the config's ``model.trusted_keys``, and installs it with
:meth:`ModelStore.install` (card, labels, self-test in a child process; nothing changes
unless all pass). The switch itself happens in the sorting loop between items, as on SIGHUP
(``request_swap``); the service reports ``applied`` or, if the daemon cannot run the new
model, rolls the store back and reports ``rolled_back``.

A bin's own topic takes precedence over ``smartbin/all/model``. A retained message comes
again at every reconnect: one already handled in this run is not fetched again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.store import INSTALL_RECORD, ModelStore
from bin_daemon.telemetry.rollout import RolloutError, RolloutRequest, clean, fetch, parse_request

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
NO_KEYS = (
    "no trusted keys: set model.trusted_keys in the bin's config to the fleet's public key "
    "(bin-daemon model keygen); unsigned models are refused"
)


def read_signer(folder: Path) -> str | None:
    """The key id an installed model folder was signed by (its installed.json), if any."""
    try:
        record = json.loads((folder / INSTALL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    signer = record.get("signed_by") if isinstance(record, dict) else None
    return signer if isinstance(signer, str) else None


def outcome(result: str, reason: str, request: RolloutRequest | None = None,
            topic: str = "") -> dict[str, Any]:  # fmt: skip
    """The JSON reported on ``smartbin/<bin_id>/status/model``."""
    return {
        "result": result,
        "reason": reason,
        "sha256": request.sha256 if request else None,
        "url": request.url if request else None,
        "topic": request.topic if request else topic,
    }


class RolloutWorker:
    def __init__(
        self,
        *,
        own_topic: str,
        store: ModelStore | None,
        store_problem: str | None,
        active_sha: Callable[[], str],
        request_swap: Callable[[RolloutRequest, str], None],
        report: Report,
        max_bytes: int,
        trusted_keys: Callable[[], Sequence[str]] = list,
    ) -> None:
        self.own_topic = own_topic
        self.store = store
        self.store_problem = store_problem
        self._active_sha = active_sha
        self._request_swap = request_swap
        self._report = report
        self.max_bytes = max_bytes
        self._trusted_keys = trusted_keys
        """The config's model.trusted_keys, read at each roll-out (a reload may change them)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._messages: dict[str, bytes] = {}
        """Latest payload per topic (own, fleet)."""
        self._last: tuple[str, bytes] | None = None
        self._handled: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)

    def offer(self, topic: str, payload: bytes) -> None:
        """A message on a model topic (any thread; returns at once)."""
        with self._lock:
            self._messages[topic] = bytes(payload)
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _effective(self) -> tuple[str, bytes] | None:
        with self._lock:
            own = self._messages.get(self.own_topic, b"")
            if own.strip():
                return self.own_topic, own
            for topic, payload in self._messages.items():
                if topic != self.own_topic and payload.strip():
                    return topic, payload
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            chosen = self._effective()
            if chosen is None or chosen == self._last:
                continue
            self._last = chosen
            try:
                self.handle(*chosen)
            except Exception:  # never let a roll-out take the thread down
                log.exception("roll-out from %s failed unexpectedly", chosen[0])

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one roll-out message (on this thread; tests call it directly)."""
        try:
            request = parse_request(payload, topic=topic)
        except RolloutError as error:
            self._refuse(outcome("refused", f"malformed roll-out message: {error}", topic=topic))
            return
        if request is None:
            return
        key = (request.url, request.sha256)
        if key in self._handled:
            log.debug("roll-out %s already handled in this run", request.sha256[:12])
            return
        self._handled.add(key)
        if request.sha256 == self._active_sha():
            log.info("roll-out %s: already the running model", request.sha256[:12])
            self._report(outcome("current", "already the running model; nothing to do", request))
            return
        if self.store is None:
            self._refuse(outcome("refused", self.store_problem or "no model store", request))
            return
        keys = list(self._trusted_keys())
        if not keys:
            self._refuse(outcome("refused", NO_KEYS, request))
            return
        log.info("roll-out %s from %s: fetching", request.sha256[:12], request.url)
        work = Path(tempfile.mkdtemp(prefix="bin-daemon-rollout-"))
        try:
            source = fetch(request, work, max_bytes=self.max_bytes)
            result = self.store.install(source, trusted_keys=keys)
        except (BinDaemonError, OSError) as error:
            # The download folder is temporary: name the files, not where they were.
            self._refuse(outcome("refused", str(error).replace(f"{work}/", ""), request))
            return
        finally:
            clean(work)
        test = result.self_test
        note = (
            f"self-test passed ({test.correct}/{test.total} golden images)"
            if test is not None
            else "installed in the store earlier"
        )
        signer = read_signer(result.entry.path)
        if signer:
            note += f", signed by key {signer}"
        log.info("roll-out %s: %s; switching between items", request.sha256[:12], note)
        self._request_swap(request, note)

    def _refuse(self, report: dict[str, Any]) -> None:
        log.warning("model roll-out refused: %s", report["reason"])
        self._report(report)
