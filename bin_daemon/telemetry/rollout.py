"""Model roll-out messages: parse them, fetch the model, check its sha256.

A roll-out is a retained message on ``smartbin/<bin_id>/model`` (or ``smartbin/all/model``
for every bin)::

    {"url": "https://models.example.org/v7/waste_classifier.tflite",
     "sha256": "<64 hex digits of the .tflite>"}

``url`` is an http(s) URL of a ``.tflite`` file whose ``model_card.json``, ``labels.txt`` and
``model.sig`` (the fleet owner's signature, :mod:`bin_daemon.model.signing`) lie beside it.
Local paths and ``file://`` URLs are refused: a message from the network must not make the
bin read its own files. The ``.tflite`` must hash to ``sha256`` before anything else is
fetched; then the signature is checked against the bin's trusted keys, and the model
store's own install (card, labels, self-test in a child process) decides. An empty payload
clears a retained roll-out and is ignored.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.classifier import sha256_file
from bin_daemon.model.store import CARD_FILE, LABELS_FILE, MODEL_FILE, SIGNATURE_FILE

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FETCH_TIMEOUT_S = 30.0
SIDE_FILE_MAX_BYTES = 1 << 20
"""The card and the labels are small; more than this is not one."""


class RolloutError(BinDaemonError):
    """A roll-out was refused; the message says why (it is reported on the status topic)."""


@dataclass(frozen=True)
class RolloutRequest:
    url: str
    sha256: str
    topic: str = ""


def parse_request(payload: bytes, *, topic: str = "") -> RolloutRequest | None:
    """A roll-out message -> a request; None for an empty (cleared) message.

    :class:`RolloutError` for anything else that is not ``{"url": ..., "sha256": ...}``.
    """
    if not payload.strip():
        return None
    try:
        data: Any = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RolloutError(f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise RolloutError('expected a JSON object {"url": ..., "sha256": ...}')
    missing = [key for key in ("url", "sha256") if key not in data]
    if missing:
        raise RolloutError(f"missing {', '.join(missing)}")
    url, sha256 = data["url"], data["sha256"]
    if not isinstance(url, str) or not url.strip():
        raise RolloutError("'url' must be a non-empty string")
    if not isinstance(sha256, str) or not _SHA256.match(sha256.lower()):
        raise RolloutError("'sha256' must be 64 hex digits (the .tflite file's sha256)")
    return RolloutRequest(url=url.strip(), sha256=sha256.lower(), topic=topic)


def check_url(url: str) -> None:
    """Only http(s) URLs with a host: a roll-out never names a file on the bin itself."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        return
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        raise RolloutError(
            f"{url}: a local path; roll-outs over the network take http(s) URLs only "
            "(install a local model with 'bin-daemon model install DIR')"
        )
    raise RolloutError(f"{url}: unsupported URL (http or https with a host name)")


def _download(url: str, target: Path, *, max_bytes: int, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise RolloutError(
                    f"{url}: {length} bytes, more than the {max_bytes} bytes allowed"
                )
            written = 0
            with target.open("wb") as stream:
                while chunk := response.read(1 << 16):
                    written += len(chunk)
                    if written > max_bytes:
                        raise RolloutError(f"{url}: more than the {max_bytes} bytes allowed")
                    stream.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise RolloutError(f"{url}: download failed ({reason})") from None


def fetch(request: RolloutRequest, work_dir: Path, *, max_bytes: int,
          timeout_s: float = FETCH_TIMEOUT_S) -> Path:  # fmt: skip
    """Download the model named by ``request`` with its card, labels and signature into
    ``work_dir`` (a folder of the four), the ``.tflite``'s sha256 checked first."""
    check_url(request.url)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = work_dir / MODEL_FILE
    _download(request.url, model, max_bytes=max_bytes, timeout_s=timeout_s)
    verify_sha256(model, request.sha256)  # before fetching anything else
    for name in (CARD_FILE, LABELS_FILE, SIGNATURE_FILE):
        url = urllib.parse.urljoin(request.url, name)
        try:
            _download(url, work_dir / name, max_bytes=SIDE_FILE_MAX_BYTES, timeout_s=timeout_s)
        except RolloutError as error:
            if name != SIGNATURE_FILE:
                raise
            raise RolloutError(f"unsigned model: no signature beside it ({error})") from None
    return work_dir


def verify_sha256(model: Path, expected: str) -> None:
    actual = sha256_file(model)
    if actual != expected.lower():
        raise RolloutError(
            f"sha256 mismatch: the file is {actual[:12]}..., the roll-out says "
            f"{expected[:12]}... (wrong file or damaged download)"
        )


def clean(work_dir: Path) -> None:
    shutil.rmtree(work_dir, ignore_errors=True)
