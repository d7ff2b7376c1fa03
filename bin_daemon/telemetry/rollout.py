"""Model roll-out messages: parse them, fetch the model, check its sha256.

A roll-out is a retained message on ``smartbin/<bin_id>/model`` (or ``smartbin/all/model``
for every bin)::

    {"url": "https://models.example.org/v7/waste_classifier.tflite",
     "sha256": "<64 hex digits of the .tflite>"}

``url`` is an http(s) or ``file://`` URL, or a path on the bin, of a ``.tflite`` file whose
``model_card.json`` and ``labels.txt`` lie beside it (a local folder of the three works
too). The ``.tflite`` must hash to ``sha256`` before anything else happens; then the model
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
from bin_daemon.model.store import CARD_FILE, LABELS_FILE, MODEL_FILE

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


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        return Path(url)
    if parsed.scheme in ("http", "https"):
        return None
    raise RolloutError(f"unsupported URL scheme {parsed.scheme!r} (http, https, file or a path)")


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
    """The model named by ``request`` as a local model folder or ``.tflite`` (with its card
    and labels beside it), its sha256 checked. Downloads go into ``work_dir``."""
    local = _local_path(request.url)
    if local is not None:
        if not local.exists():
            raise RolloutError(f"{local}: no such file or folder on this bin")
        model = local / MODEL_FILE if local.is_dir() else local
        if not model.is_file():
            raise RolloutError(f"{model}: model file missing")
        if model.stat().st_size > max_bytes:
            raise RolloutError(f"{model}: larger than the {max_bytes} bytes allowed")
        verify_sha256(model, request.sha256)
        return local
    work_dir.mkdir(parents=True, exist_ok=True)
    model = work_dir / MODEL_FILE
    _download(request.url, model, max_bytes=max_bytes, timeout_s=timeout_s)
    verify_sha256(model, request.sha256)  # before fetching anything else
    for name in (CARD_FILE, LABELS_FILE):
        _download(urllib.parse.urljoin(request.url, name), work_dir / name,
                  max_bytes=SIDE_FILE_MAX_BYTES, timeout_s=timeout_s)  # fmt: skip
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
