"""The model store: static checks, the child-process self-test, atomic switch and rollback.

Models here are fabricated: a few bytes with the TFLite identifier, a card and labels. The
self-test runs a stand-in classifier (``fake_classify.py``, written below) whose answers
depend on the model's bytes, so a test can make a "model" that is right, wrong or crashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bin_daemon.cli import model as cli_model
from bin_daemon.errors import ModelError
from bin_daemon.model import store as model_store
from bin_daemon.model.store import (
    CARD_FILE,
    LABELS_FILE,
    MODEL_FILE,
    GoldenSet,
    ModelStore,
    check_model,
    load_golden,
)

LABELS = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
REPO = Path(__file__).resolve().parent.parent

FAKE_CLASSIFY = textwrap.dedent(
    """
    import json, os, sys
    args = sys.argv[1:]
    model = args[args.index("--model") + 1]
    images = [a for a in args if a.endswith(".jpg")]
    body = open(os.path.join(model, "waste_classifier.tflite"), "rb").read()
    if b"CRASH" in body:
        os.abort()
    if b"BROKEN" in body:
        sys.exit("ValueError: model input type float32 is not supported")
    def label(path):
        if b"WRONG" in body:
            return "trash"
        return os.path.basename(path).rstrip("0123456789.jpg")
    print(json.dumps([{"image": p, "label": label(p), "confidence": 0.9} for p in images]))
    """
)


def make_model(
    folder: Path,
    *,
    payload: bytes = b"good",
    version: str = "1.0.0",
    labels: list[str] | None = None,
    card_labels: list[str] | None = None,
    sha256: str | None = None,
    magic: bytes = b"TFL3",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"\x1c\x00\x00\x00" + magic + payload + os.urandom(8)
    (folder / MODEL_FILE).write_bytes(body)
    (folder / LABELS_FILE).write_text("\n".join(labels or LABELS) + "\n")
    card = {
        "model_file": MODEL_FILE,
        "version": version,
        "sha256": sha256 or hashlib.sha256(body).hexdigest(),
        "labels": card_labels or labels or LABELS,
        "input": {"size": 224, "dtype": "uint8"},
        "unsure_threshold": 0.6,
    }
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


@pytest.fixture
def fake_classify(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_classify.py"
    script.write_text(FAKE_CLASSIFY)
    return [sys.executable, str(script)]


@pytest.fixture
def store(tmp_path: Path, fake_classify: list[str]) -> ModelStore:
    return ModelStore(tmp_path / "store", classify_command=fake_classify)


def current_name(store: ModelStore) -> str | None:
    link = store.root / "current"
    return os.readlink(link) if link.is_symlink() else None


# ---------------------------------------------------------------------------- checks


def test_valid_model_passes_checks(tmp_path: Path) -> None:
    checked = check_model(make_model(tmp_path / "m", version="2.1"))
    assert checked.labels == tuple(LABELS)
    assert checked.store_name == f"2.1-{checked.sha256[:12]}"


def test_tflite_file_with_card_beside_it_is_accepted(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    assert check_model(folder / MODEL_FILE).sha256 == check_model(folder).sha256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: make_model(d, magic=b"PK\x03\x04"), "not a TFLite model"),
        (lambda d: make_model(d, sha256="0" * 64), "does not match the card"),
        (lambda d: (make_model(d) / CARD_FILE).unlink(), "model card missing"),
        (lambda d: (make_model(d) / CARD_FILE).write_text("{nope"), "not valid JSON"),
        (lambda d: (make_model(d) / MODEL_FILE).unlink(), "model file missing"),
        (lambda d: (make_model(d) / LABELS_FILE).unlink(), "labels file missing"),
        (lambda d: make_model(d, card_labels=[*LABELS[1:], LABELS[0]]), "do not match"),
    ],
    ids=["magic", "sha256", "no-card", "bad-json", "no-model", "no-labels", "label-order"],
)
def test_each_bad_model_gets_its_own_error(tmp_path: Path, change, message: str) -> None:
    folder = tmp_path / "m"
    change(folder)
    with pytest.raises(ModelError, match=message):
        check_model(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("unsure_threshold", 1.5, "between 0 and 1"),
        ("input", {"size": 0}, "input.size"),
        ("labels", [], "labels"),
        ("version", "", "version"),
    ],
)
def test_card_fields_are_validated(tmp_path: Path, key: str, value, message: str) -> None:
    folder = make_model(tmp_path / "m")
    card = json.loads((folder / CARD_FILE).read_text())
    card[key] = value
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        check_model(folder)


def test_card_missing_keys_are_named(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    card = json.loads((folder / CARD_FILE).read_text())
    del card["sha256"], card["unsure_threshold"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="'sha256' missing, 'unsure_threshold' missing"):
        check_model(folder)


# ------------------------------------------------------------------------ install/rollback


def test_install_makes_current_and_keeps_previous(tmp_path: Path, store: ModelStore) -> None:
    first = store.install(make_model(tmp_path / "a", version="1.0.0"))
    assert first.self_test is not None and first.self_test.correct == 6
    assert first.previous is None
    second = store.install(make_model(tmp_path / "b", version="1.1.0"))
    assert current_name(store) == second.entry.name
    assert os.readlink(store.root / "previous") == first.entry.name
    assert (store.root / "current" / MODEL_FILE).read_bytes() == (
        tmp_path / "b" / MODEL_FILE
    ).read_bytes()
    record = json.loads((store.root / "current" / "installed.json").read_text())
    assert record["version"] == "1.1.0" and record["installed_at"].endswith("+00:00")


def test_third_install_prunes_the_oldest(tmp_path: Path, store: ModelStore) -> None:
    names = [store.install(make_model(tmp_path / v, version=v)).entry.name for v in "123"]
    folders = sorted(p.name for p in store.root.iterdir() if p.is_dir() and not p.is_symlink())
    assert folders == sorted(names[1:])


def test_reinstalling_current_is_a_no_op(tmp_path: Path, store: ModelStore) -> None:
    folder = make_model(tmp_path / "a")
    store.install(folder)
    again = store.install(folder)
    assert again.already_current and again.self_test is None


def test_rollback_swaps_current_and_previous(tmp_path: Path, store: ModelStore) -> None:
    old = store.install(make_model(tmp_path / "a", version="1.0.0")).entry
    new = store.install(make_model(tmp_path / "b", version="2.0.0")).entry
    assert store.rollback().name == old.name
    assert current_name(store) == old.name
    assert os.readlink(store.root / "previous") == new.name
    store.rollback()
    assert current_name(store) == new.name


def test_rollback_without_previous_is_one_clear_error(tmp_path: Path, store: ModelStore) -> None:
    with pytest.raises(ModelError, match="no previous model"):
        store.rollback()
    store.install(make_model(tmp_path / "a"))
    with pytest.raises(ModelError, match="no previous model"):
        store.rollback()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"WRONG", r"got 1 of 6 golden images right, at least 5 needed"),
        (b"CRASH", r"failed on the new model \(killed by SIGABRT"),
        (b"BROKEN", r"\(exit status 1: ValueError: .*float32 is not supported\)"),
    ],
)
def test_failed_self_test_leaves_current_untouched(
    tmp_path: Path, store: ModelStore, payload: bytes, message: str
) -> None:
    good = store.install(make_model(tmp_path / "good")).entry
    before = sorted(p.name for p in store.root.iterdir())
    with pytest.raises(ModelError, match=message):
        store.install(make_model(tmp_path / "bad", payload=payload, version="9"))
    assert current_name(store) == good.name
    assert not (store.root / "previous").exists()
    assert sorted(p.name for p in store.root.iterdir()) == before  # staging removed


def test_self_test_timeout_is_reported(
    tmp_path: Path, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hang(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(model_store.subprocess, "run", hang)
    with pytest.raises(ModelError, match="within 120 s; the current model is unchanged"):
        store.install(make_model(tmp_path / "a"))
    assert current_name(store) is None


def test_model_without_a_golden_class_is_refused(tmp_path: Path, store: ModelStore) -> None:
    folder = make_model(tmp_path / "a", labels=["paper", "plastic"])
    with pytest.raises(ModelError, match="no label for golden class"):
        store.install(folder)


def test_golden_set_ships_with_the_package() -> None:
    golden = load_golden()
    assert isinstance(golden, GoldenSet)
    assert {image.label for image in golden.images} == set(LABELS)
    assert 1 <= golden.min_correct <= len(golden.images)


def test_unwritable_store_gives_a_hint() -> None:
    with pytest.raises(ModelError, match="run as root"):
        ModelStore(Path("/proc/no-store")).rollback()


# ---------------------------------------------------------------------------------- CLI


def test_cli_install_status_rollback(
    tmp_path: Path,
    fake_classify: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(model_store, "CLASSIFY_COMMAND", tuple(fake_classify))
    monkeypatch.setenv(model_store.STORE_ENV, str(tmp_path / "store"))
    assert cli_model.main(["model", "install", str(make_model(tmp_path / "a", version="1"))]) == 0
    assert cli_model.main(["model", "install", str(make_model(tmp_path / "b", version="2"))]) == 0
    out = capsys.readouterr().out
    assert "self-test passed: 6/6" in out and "not the service's store" in out
    assert cli_model.main(["model", "rollback"]) == 0
    assert cli_model.main(["model", "status"]) == 0
    out = capsys.readouterr().out
    assert "current: version 1," in out and "previous: version 2," in out


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = make_model(tmp_path / "a", magic=b"JUNK")
    assert cli_model.main(["model", "install", str(bad), "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a TFLite model" in err
    assert err.count("\n") == 1


# ------------------------------------------------------- the shipped model, for real


@pytest.mark.slow
def test_shipped_model_installs_with_the_real_self_test(tmp_path: Path) -> None:
    source = tmp_path / "shipped"
    shutil.copytree(REPO / "models", source)
    result = ModelStore(tmp_path / "store").install(source)
    assert result.self_test is not None
    assert result.self_test.correct >= load_golden().min_correct


# ------------------------------------------- the real 'classify' in the child process

FIXTURES = REPO / "tests" / "data" / "models"


def _fixture_model(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    body = (FIXTURES / f"{name}.tflite").read_bytes()
    (folder / MODEL_FILE).write_bytes(body)
    (folder / LABELS_FILE).write_text("\n".join(LABELS) + "\n")
    card = {
        "model_file": MODEL_FILE,
        "version": name,
        "sha256": hashlib.sha256(body).hexdigest(),
        "labels": LABELS,
        "input": {"size": 32},
        "unsure_threshold": 0.5,
    }
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # Random weights: a working model that gets the golden images wrong.
        ("tiny_uint8_32px", r"got \d of 6 golden images right, at least 5 needed"),
        # A float model: the classifier refuses it, the child exits 1.
        ("tiny_float_32px", r"\(exit status 1: .*input type float32"),
    ],
)
def test_real_classify_child_rejects_a_bad_model(tmp_path: Path, name: str, message: str) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelError, match=message):
        store.install(_fixture_model(tmp_path, name))
    assert current_name(store) is None
    assert [p.name for p in store.root.iterdir()] == [".lock"]
