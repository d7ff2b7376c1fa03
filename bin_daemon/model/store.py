"""The on-device model store: checked, versioned model folders and an atomic switch.

Layout (default root ``/var/lib/bin-daemon/models``)::

    models/
      1.2.0-3fa4c9d2b7e1/        one folder per installed model (version + sha256 prefix)
        waste_classifier.tflite
        labels.txt
        model_card.json
        installed.json           when and from where it was installed
      current -> 1.2.0-3fa4c9d2b7e1
      previous -> 1.1.0-0be2d4a977c0

The daemon's config points at ``models/current``. ``install`` checks a new model (TFLite
magic, card, sha256, labels), runs a self-test on the golden images *in a child process*
(a malformed int8 model can abort the interpreter's whole process, see docs/TOOLCHAIN.md), and
only then moves the symlinks, each with ``os.replace`` so a reader sees the old model or
the new one, never a half-written one. Folders that neither link names are pruned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bin_daemon.errors import ModelError
from bin_daemon.model.classifier import TFLITE_MAGIC, read_card, sha256_file
from bin_daemon.paths import PACKAGE_DIR

MODEL_FILE = "waste_classifier.tflite"
LABELS_FILE = "labels.txt"
CARD_FILE = "model_card.json"
INSTALL_RECORD = "installed.json"
SIGNATURE_FILE = "model.sig"
"""The fleet owner's signature of the folder (bin_daemon.model.signing)."""

DEFAULT_STORE = Path("/var/lib/bin-daemon/models")
STORE_ENV = "BIN_DAEMON_MODEL_STORE"
GOLDEN_DIR = PACKAGE_DIR / "golden"
SELF_TEST_TIMEOUT_S = 120.0
"""Loading ai-edge-litert and six images takes about 2 s on a Pi 4; 120 s is a hang."""

CLASSIFY_COMMAND: tuple[str, ...] = (sys.executable, "-m", "bin_daemon", "classify")
CURRENT = "current"
PREVIOUS = "previous"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_store() -> Path:
    """The store root: ``$BIN_DAEMON_MODEL_STORE`` if set, else ``/var/lib/bin-daemon/models``."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


# --------------------------------------------------------------------------- static checks


@dataclass(frozen=True)
class CheckedModel:
    """A model whose files passed the static checks (not yet the self-test)."""

    model: Path
    labels_file: Path
    card: dict[str, Any]
    version: str
    sha256: str
    labels: tuple[str, ...]

    @property
    def store_name(self) -> str:
        """The folder name in the store: ``<version>-<sha12>``, or ``<sha12>`` alone."""
        short = self.sha256[:12]
        return f"{self.version}-{short}" if _SAFE_NAME.match(self.version) else short


def locate(source: Path) -> tuple[Path, Path, Path]:
    """(model, card, labels) for a model folder or a ``.tflite`` with its card beside it."""
    if source.is_dir():
        card_path = source / CARD_FILE
        model_path = source / MODEL_FILE
        if card_path.is_file() and not model_path.is_file():
            # The card may name the file differently.
            named = read_card(card_path).get("model_file")
            if isinstance(named, str) and named and "/" not in named:
                model_path = source / named
        return model_path, card_path, source / LABELS_FILE
    if source.is_file():
        return source, source.parent / CARD_FILE, source.parent / LABELS_FILE
    raise ModelError(f"{source}: no such file or folder")


def _check_card(card: dict[str, Any], where: Path) -> None:
    problems: list[str] = []
    for key in ("model_file", "version", "sha256", "labels", "input", "unsure_threshold"):
        if key not in card:
            problems.append(f"'{key}' missing")
    if problems:
        raise ModelError(f"{where}: model card invalid: {', '.join(problems)}")
    if not isinstance(card["model_file"], str) or not card["model_file"]:
        problems.append("'model_file' must be a file name")
    if not isinstance(card["version"], str | int) or not str(card["version"]).strip():
        problems.append("'version' must be a non-empty string")
    if not isinstance(card["sha256"], str) or not _SHA256.match(card["sha256"].lower()):
        problems.append("'sha256' must be 64 hex digits")
    labels = card["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) and x for x in labels)
    ):
        problems.append("'labels' must be a non-empty list of names")
    elif len(set(labels)) != len(labels):
        problems.append("'labels' has duplicates")
    size = card["input"].get("size") if isinstance(card["input"], dict) else None
    sizes = size if isinstance(size, list) else [size]
    if not sizes or not all(type(s) is int and s > 0 for s in sizes):
        problems.append("'input.size' must be a positive integer (or a list of them)")
    threshold = card["unsure_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        problems.append("'unsure_threshold' must be a number")
    elif not 0.0 <= threshold <= 1.0:
        problems.append("'unsure_threshold' must be between 0 and 1")
    if problems:
        raise ModelError(f"{where}: model card invalid: {'; '.join(problems)}")


def check_model(source: Path) -> CheckedModel:
    """Static checks of a model folder or ``.tflite`` file; :class:`ModelError` on the first
    problem, in this order: files present, TFLite magic, card valid, sha256, labels."""
    source = Path(source)
    model, card_path, labels_path = locate(source)
    if not model.is_file():
        raise ModelError(f"{model}: model file missing")
    with model.open("rb") as stream:
        head = stream.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise ModelError(
            f"{model}: not a TFLite model (no 'TFL3' identifier at byte 4; "
            f"found {head[4:8]!r}); was it exported with the LiteRT converter?"
        )
    card = read_card(card_path)
    _check_card(card, card_path)
    digest = sha256_file(model)
    if digest != card["sha256"].lower():
        raise ModelError(
            f"{model}: sha256 {digest[:12]}... does not match the card's "
            f"{card['sha256'][:12]}... (damaged copy, or the card belongs to another model)"
        )
    if not labels_path.is_file():
        raise ModelError(f"{labels_path}: labels file missing")
    labels = tuple(line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines())
    labels = tuple(x for x in labels if x)
    if list(labels) != card["labels"]:
        raise ModelError(
            f"{labels_path}: labels {list(labels)} do not match the card's {card['labels']} "
            "(same names, same order)"
        )
    return CheckedModel(
        model=model,
        labels_file=labels_path,
        card=card,
        version=str(card["version"]).strip(),
        sha256=digest,
        labels=labels,
    )


def verify_signature(source: Path, trusted_keys: Sequence[str]) -> str:
    """The key id that signed the model folder (or ``.tflite``'s folder) ``source``;
    :class:`~bin_daemon.model.signing.SignatureError` if it is unsigned or badly signed."""
    from bin_daemon.model import signing  # cryptography: only when a signature is checked

    model, card_path, labels_path = locate(Path(source))
    folder = model.parent
    required = [model.name, card_path.name, labels_path.name]
    return signing.verify_folder(folder, required, trusted_keys).key_id


# ------------------------------------------------------------------------------ self-test


@dataclass(frozen=True)
class GoldenImage:
    path: Path
    label: str


@dataclass(frozen=True)
class GoldenSet:
    images: tuple[GoldenImage, ...]
    min_correct: int


@dataclass(frozen=True)
class SelfTestResult:
    correct: int
    total: int
    misses: tuple[str, ...]
    """``"glass1.jpg: glass -> plastic"`` for each image classified otherwise."""


def load_golden(directory: Path = GOLDEN_DIR) -> GoldenSet:
    """The golden images and how many of them a model must get right (``golden.json``)."""
    index = directory / "golden.json"
    try:
        spec = json.loads(index.read_text(encoding="utf-8"))
        images = tuple(
            GoldenImage(directory / item["file"], str(item["label"])) for item in spec["images"]
        )
        min_correct = int(spec.get("min_correct", len(images)))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{index}: golden image set unreadable ({error})") from error
    missing = [str(image.path) for image in images if not image.path.is_file()]
    if missing or not images:
        raise ModelError(f"{index}: golden images missing: {', '.join(missing) or 'none listed'}")
    return GoldenSet(images, min(max(min_correct, 1), len(images)))


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 134:
        return "aborted (exit 134)"
    return f"exit status {returncode}"


def self_test(
    model_dir: Path,
    golden: GoldenSet,
    *,
    classify_command: Sequence[str] = CLASSIFY_COMMAND,
    timeout_s: float = SELF_TEST_TIMEOUT_S,
) -> SelfTestResult:
    """Classify the golden images with the model in ``model_dir`` in a child process.

    The child is ``<classify_command> --model DIR --json IMAGE...`` and must print a JSON
    list with one object per image, in order, each with at least ``image`` and ``label``.
    A crash, hang, or too few correct answers raise :class:`ModelError`.
    """
    images = [str(image.path) for image in golden.images]
    command = [*classify_command, "--model", str(model_dir), "--json", *images]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise ModelError(
            f"self-test: the new model did not classify {len(images)} images within "
            f"{timeout_s:.0f} s; the current model is unchanged"
        ) from error
    except OSError as error:
        raise ModelError(f"self-test: cannot run {command[0]} ({error})") from error
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        last = last.removeprefix("bin-daemon: ").removeprefix("error: ")
        raise ModelError(
            f"self-test: the classifier failed on the new model ({_describe_exit(done.returncode)}"
            f": {last}); the current model is unchanged"
        )
    try:
        answers = json.loads(done.stdout)
        labels = [str(answer["label"]) for answer in answers]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(
            f"self-test: 'classify --json' printed something other than a list of "
            f"{{image, label, ...}} objects ({error})"
        ) from error
    if len(labels) != len(images):
        raise ModelError(f"self-test: asked about {len(images)} images, got {len(labels)} answers")
    misses = tuple(
        f"{image.path.name}: {image.label} -> {label}"
        for image, label in zip(golden.images, labels, strict=True)
        if label != image.label
    )
    result = SelfTestResult(len(images) - len(misses), len(images), misses)
    if result.correct < golden.min_correct:
        raise ModelError(
            f"self-test: the new model got {result.correct} of {result.total} golden images "
            f"right, at least {golden.min_correct} needed ({'; '.join(misses)}); "
            "the current model is unchanged"
        )
    return result


# ---------------------------------------------------------------------------------- store


@dataclass(frozen=True)
class StoreEntry:
    name: str
    path: Path
    version: str
    sha256: str
    installed_at: str


@dataclass(frozen=True)
class InstallResult:
    entry: StoreEntry
    previous: StoreEntry | None
    self_test: SelfTestResult | None
    already_current: bool = False


class ModelStore:
    """Model folders under ``root`` with ``current`` and ``previous`` symlinks."""

    def __init__(
        self,
        root: Path,
        *,
        golden: GoldenSet | None = None,
        classify_command: Sequence[str] | None = None,
        timeout_s: float = SELF_TEST_TIMEOUT_S,
    ) -> None:
        self.root = Path(root)
        self._golden = golden
        self._classify_command = tuple(classify_command or CLASSIFY_COMMAND)
        self._timeout_s = timeout_s

    # ---- reading

    def entry(self, link: str) -> StoreEntry | None:
        """What ``current`` or ``previous`` points at, or None."""
        path = self.root / link
        if not path.is_symlink():
            return None
        target = self.root / os.readlink(path)
        if not target.is_dir():
            raise ModelError(f"{path} points at {target}, which is missing: run 'model install'")
        record: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((target / INSTALL_RECORD).read_text(encoding="utf-8"))
        with contextlib.suppress(OSError, ValueError):
            card = json.loads((target / CARD_FILE).read_text(encoding="utf-8"))
            record.setdefault("version", str(card.get("version", "?")))
            record.setdefault("sha256", str(card.get("sha256", "?")))
        return StoreEntry(
            name=target.name,
            path=target,
            version=str(record.get("version", "?")),
            sha256=str(record.get("sha256", "?")),
            installed_at=str(record.get("installed_at", "?")),
        )

    def status_lines(self) -> list[str]:
        lines = [f"store: {self.root}"]
        for link in (CURRENT, PREVIOUS):
            entry = self.entry(link)
            if entry is None:
                lines.append(f"{link}: none")
                continue
            lines.append(
                f"{link}: version {entry.version}, sha256 {entry.sha256}, "
                f"installed {entry.installed_at} ({entry.path})"
            )
        return lines

    # ---- changing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / ".lock").open("a")
        except OSError as error:
            raise ModelError(
                f"{self.root}: cannot write the model store ({error.strerror}); "
                "run as root (sudo) or pass --store"
            ) from error
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise ModelError(
                    f"{self.root}: another 'model install' or 'rollback' is running"
                ) from error
            yield

    def install(
        self,
        source: Path,
        *,
        run_self_test: bool = True,
        trusted_keys: Sequence[str] | None = None,
    ) -> InstallResult:
        """Check ``source``, self-test it, make it ``current``; the old current becomes
        ``previous``. Nothing changes unless every step passes.

        With ``trusted_keys`` (even empty) the folder's ``model.sig`` must be signed by one of
        them and cover the model, its labels and its card (:mod:`bin_daemon.model.signing`);
        checked first, before anything else is read."""
        signer = None
        if trusted_keys is not None:
            signer = verify_signature(Path(source), trusted_keys)
        checked = check_model(Path(source))
        with self._locked():
            current = self.entry(CURRENT)
            if current is not None and current.name == checked.store_name:
                return InstallResult(current, self.entry(PREVIOUS), None, already_current=True)
            staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
            try:
                self._stage(checked, staging, source, signer)
                result = None
                if run_self_test:
                    golden = self._golden or load_golden()
                    unknown = sorted({g.label for g in golden.images} - set(checked.labels))
                    if unknown:
                        raise ModelError(
                            f"self-test: the model has no label for golden class(es) {unknown}"
                        )
                    result = self_test(
                        staging,
                        golden,
                        classify_command=self._classify_command,
                        timeout_s=self._timeout_s,
                    )
                final = self.root / checked.store_name
                if final.is_dir():  # e.g. re-installing the previous model: same bytes
                    shutil.rmtree(staging)
                else:
                    os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._match_owner(final)
            if current is not None:
                self._point(PREVIOUS, current.name)
            self._point(CURRENT, final.name)
            self._prune()
            entry = self.entry(CURRENT)
            assert entry is not None
            return InstallResult(entry, current, result)

    def rollback(self) -> StoreEntry:
        """Swap ``current`` and ``previous``; returns the entry now current."""
        with self._locked():
            current, previous = self.entry(CURRENT), self.entry(PREVIOUS)
            if previous is None:
                raise ModelError(f"{self.root}: no previous model to roll back to")
            self._point(CURRENT, previous.name)
            if current is not None:
                self._point(PREVIOUS, current.name)
            return previous

    # ---- helpers

    def _stage(
        self, checked: CheckedModel, staging: Path, source: Path, signer: str | None
    ) -> None:
        os.chmod(staging, 0o755)
        shutil.copyfile(checked.model, staging / MODEL_FILE)
        shutil.copyfile(checked.labels_file, staging / LABELS_FILE)
        card_path = checked.model.parent / CARD_FILE
        signature = checked.model.parent / SIGNATURE_FILE
        if checked.model.name == MODEL_FILE:
            # Byte for byte, so a signed folder's model.sig still checks out in the store.
            shutil.copyfile(card_path, staging / CARD_FILE)
            if signature.is_file():
                shutil.copyfile(signature, staging / SIGNATURE_FILE)
        else:
            card = dict(checked.card, model_file=MODEL_FILE)
            (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        if sha256_file(staging / MODEL_FILE) != checked.sha256:
            raise ModelError(f"{checked.model}: changed while it was being copied; try again")
        record = {
            "version": checked.version,
            "sha256": checked.sha256,
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": str(Path(source).resolve()),
        }
        if signer is not None:
            record["signed_by"] = signer
        (staging / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        for path in staging.iterdir():
            os.chmod(path, 0o644)
            with path.open("rb") as stream:
                os.fsync(stream.fileno())

    def _match_owner(self, folder: Path) -> None:
        """Run as root on a store the service user owns: hand the new folder to that user."""
        owner = self.root.stat()
        if os.geteuid() != 0 or owner.st_uid == 0:
            return
        for path in (folder, *folder.iterdir()):
            os.chown(path, owner.st_uid, owner.st_gid)

    def _point(self, link: str, target_name: str) -> None:
        temporary = self.root / f".{link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(target_name, temporary)
        os.replace(temporary, self.root / link)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _prune(self) -> None:
        keep = {
            os.readlink(self.root / link)
            for link in (CURRENT, PREVIOUS)
            if (self.root / link).is_symlink()
        }
        for path in self.root.iterdir():
            # Under the lock, an ".incoming-*" folder is left over from an interrupted install.
            if path.is_dir() and not path.is_symlink() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
