"""Model signatures: the fleet owner signs a model folder, each bin checks it (ed25519).

The signature is a file in the model folder, ``model.sig`` (JSON)::

    {"format": "bin-daemon-model-signature/1",
     "files": {"labels.txt": "<sha256>", "model_card.json": "<sha256>",
               "waste_classifier.tflite": "<sha256>"},
     "key_id": "<16 hex digits: the start of the public key's sha256>",
     "signature": "<base64 of the ed25519 signature>"}

The signed bytes are the manifest alone, ``{"files": ..., "format": ...}`` as compact JSON
with sorted keys (UTF-8); ``key_id`` only says which key to try. The manifest names every file
the model store installs (the model, its labels, its card), so nothing in the folder that
the bin uses can be swapped. A bin holds only public keys (``model.trusted_keys`` in its
config: the base64 of the 32-byte raw key, as ``model keygen`` prints it); the private key
stays with the fleet owner.

The only module that imports ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.store import SIGNATURE_FILE

FORMAT = "bin-daemon-model-signature/1"
MAX_SIGNATURE_BYTES = 64 * 1024


class SignatureError(BinDaemonError):
    """A model is unsigned, or its signature does not check out; the message says which."""


@dataclass(frozen=True)
class Verified:
    key_id: str
    files: tuple[str, ...]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of its raw bytes' sha256."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The form ``model.trusted_keys`` takes: base64 of the 32 raw bytes (44 characters)."""
    return base64.b64encode(_raw(public)).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A ``model.trusted_keys`` entry -> the key; :class:`SignatureError` if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(
            f"{text[:20]!r}...: not a public key (expected the 44-character base64 line that "
            "'bin-daemon model keygen' prints)"
        ) from None
    if len(raw) != 32:
        raise SignatureError(
            f"{text[:20]!r}...: {len(raw)} bytes, but an ed25519 public key has 32 "
            "(the line 'bin-daemon model keygen' prints)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


# ----------------------------------------------------------------------- the owner's side


def generate_key(private_path: Path) -> Ed25519PublicKey:
    """Write a new private key to ``private_path`` (PKCS#8 PEM, mode 0600, never over an
    existing file) and its public key beside it (``.pub``, the config line); return it."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path}: exists already; not overwriting a key")
    try:
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(pem)
        public_path.write_text(public_key_text(key.public_key()) + "\n", encoding="ascii")
    except OSError as error:
        raise SignatureError(f"{error.filename}: cannot write the key ({error.strerror})") from None
    return key.public_key()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SignatureError(f"{path}: cannot read the private key ({error.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError(
            f"{path}: not an unencrypted PEM private key (make one with 'bin-daemon model keygen')"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an ed25519 key")
    return key


def _signed_bytes(files: dict[str, str]) -> bytes:
    manifest = {"format": FORMAT, "files": files}
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_folder(folder: Path, files: Sequence[str], key: Ed25519PrivateKey) -> Path:
    """Sign ``files`` (names in ``folder``) with ``key``; write and return ``model.sig``."""
    folder = Path(folder)
    hashes: dict[str, str] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise SignatureError(f"{path}: missing; a model folder has the model, labels and card")
        hashes[name] = _sha256(path)
    signature = key.sign(_signed_bytes(hashes))
    document = {
        "format": FORMAT,
        "files": hashes,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    target = folder / SIGNATURE_FILE
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


# --------------------------------------------------------------------------- the bin's side


def _read_signature(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{path}: larger than a signature file can be")
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SignatureError(
            f"unsigned model: no {SIGNATURE_FILE} in {path.parent} (sign it with "
            "'bin-daemon model sign DIR --key FILE')"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SignatureError(f"{path}: unreadable signature file ({error})") from None
    files = document.get("files") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(files, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        or not isinstance(document.get("signature"), str)
    ):
        raise SignatureError(f"{path}: not a {FORMAT} file (format, files, signature)")
    return document


def verify_folder(folder: Path, required: Sequence[str], trusted_keys: Sequence[str]) -> Verified:
    """Check ``folder``'s ``model.sig``: signed by one of ``trusted_keys``, naming every file
    in ``required``, and each named file's sha256 as signed. :class:`SignatureError` (one
    line) on the first problem."""
    folder = Path(folder)
    if not trusted_keys:
        raise SignatureError(
            "no trusted keys: set model.trusted_keys in the config to the fleet's public key "
            "(bin-daemon model keygen prints it); unsigned models are refused"
        )
    keys = [parse_public_key(text) for text in trusted_keys]
    path = folder / SIGNATURE_FILE
    document = _read_signature(path)
    files: dict[str, str] = document["files"]
    try:
        signature = base64.b64decode(document["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{path}: the signature is not base64") from None
    message = _signed_bytes(files)
    signer = None
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        signer = key
        break
    if signer is None:
        named = document.get("key_id")
        raise SignatureError(
            f"bad signature: {path} was not signed by a trusted key (it names key "
            f"{named!r}; trusted: {', '.join(key_id(k) for k in keys)}), or it was altered"
        )
    unsigned = sorted(set(required) - set(files))
    if unsigned:
        raise SignatureError(f"bad signature: {path} does not cover {', '.join(unsigned)}")
    for name, expected in files.items():
        target = folder / name
        if "/" in name or name.startswith(".") or not target.is_file():
            raise SignatureError(f"bad signature: {path} names {name!r}, not a file beside it")
        if _sha256(target) != expected:
            raise SignatureError(
                f"bad signature: {target} is not the file that was signed (sha256 differs)"
            )
    return Verified(key_id(signer), tuple(sorted(files)))
