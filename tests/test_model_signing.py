"""Model signatures (ed25519): the owner's keygen and sign, the bin's check, the store and
`model install --config`, the config's model.trusted_keys, roll-out URLs.

The roll-outs themselves, over a real broker and a real HTTP server, are in
tests/test_telemetry_rollout.py.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from test_model_store import FAKE_CLASSIFY, make_model

from bin_daemon.cli import model as cli_model
from bin_daemon.config import load_config
from bin_daemon.errors import ConfigError
from bin_daemon.model import signing
from bin_daemon.model.signing import SignatureError
from bin_daemon.model.store import (
    CARD_FILE,
    INSTALL_RECORD,
    LABELS_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelStore,
    verify_signature,
)
from bin_daemon.telemetry.rollout import RolloutError, check_url

FILES = [MODEL_FILE, LABELS_FILE, CARD_FILE]


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    """A fleet key pair made by `model keygen`: (private key file, public key text)."""
    private = tmp_path / "keys" / "fleet"
    private.parent.mkdir()
    assert cli_model.main(["model", "keygen", "--out", str(private)]) == 0
    return private, Path(f"{private}.pub").read_text().strip()


def signed_model(tmp_path: Path, key: tuple[Path, str], name: str = "m") -> Path:
    folder = make_model(tmp_path / name)
    assert cli_model.main(["model", "sign", str(folder), "--key", str(key[0])]) == 0
    return folder


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
    tmp_path, capsys
) -> None:
    private = tmp_path / "fleet"
    assert cli_model.main(["model", "keygen", "--out", str(private)]) == 0
    public = Path(f"{private}.pub").read_text().strip()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len(public) == 44  # base64 of 32 bytes
    out = capsys.readouterr().out
    # What it prints is the config's model section, ready to paste.
    snippet = out[out.index("model:\n") :]
    config = write_config(tmp_path, [])
    config.write_text(config.read_text().replace("model: {trusted_keys: []}\n", snippet))
    assert load_config(config).model.trusted_keys == [public]
    before = private.read_bytes()
    assert cli_model.main(["model", "keygen", "--out", str(private)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert private.read_bytes() == before


def test_a_signed_folder_verifies_and_names_its_key(tmp_path, key) -> None:
    folder = signed_model(tmp_path, key)
    document = json.loads((folder / SIGNATURE_FILE).read_text())
    assert sorted(document["files"]) == sorted(FILES)
    found = verify_signature(folder, [key[1]])
    assert found == document["key_id"] == signing.key_id(signing.parse_public_key(key[1]))
    # A .tflite path works as well as its folder.
    assert verify_signature(folder / MODEL_FILE, [key[1]]) == found


@pytest.mark.parametrize("name", FILES)
def test_any_changed_file_is_a_bad_signature(tmp_path, key, name) -> None:
    folder = signed_model(tmp_path, key)
    with (folder / name).open("ab") as stream:
        stream.write(b"\n")
    with pytest.raises(SignatureError, match=rf"bad signature: .*{name} is not the file"):
        verify_signature(folder, [key[1]])


def test_another_key_or_an_altered_manifest_is_a_bad_signature(tmp_path, key) -> None:
    folder = signed_model(tmp_path, key)
    other = signing.public_key_text(signing.generate_key(tmp_path / "other"))
    with pytest.raises(SignatureError, match="was not signed by a trusted key"):
        verify_signature(folder, [other])
    # The right key among several is enough.
    assert verify_signature(folder, [other, key[1]])
    # Someone edits the manifest to match a swapped model file: the signature no longer fits.
    (folder / MODEL_FILE).write_bytes(b"\x1c\x00\x00\x00TFL3evil")
    sig = json.loads((folder / SIGNATURE_FILE).read_text())
    sig["files"][MODEL_FILE] = signing._sha256(folder / MODEL_FILE)
    (folder / SIGNATURE_FILE).write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match="was not signed by a trusted key"):
        verify_signature(folder, [key[1]])


def test_a_signature_must_cover_the_card_and_labels(tmp_path, key) -> None:
    folder = make_model(tmp_path / "m")
    signing.sign_folder(folder, [MODEL_FILE], signing.load_private_key(key[0]))
    with pytest.raises(SignatureError, match=r"does not cover labels.txt, model_card.json"):
        verify_signature(folder, [key[1]])


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path, key) -> None:
    folder = make_model(tmp_path / "m")
    (tmp_path / "outside").write_text("x")
    private = signing.load_private_key(key[0])
    signing.sign_folder(folder, FILES, private)
    sig = json.loads((folder / SIGNATURE_FILE).read_text())
    files = {**sig["files"], "../outside": signing._sha256(tmp_path / "outside")}
    import base64

    sig["files"] = files
    sig["signature"] = base64.b64encode(private.sign(signing._signed_bytes(files))).decode()
    (folder / SIGNATURE_FILE).write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match=r"names '../outside', not a file beside it"):
        verify_signature(folder, [key[1]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"unsigned model: no model.sig in"),
        ("not json", r"unreadable signature file"),
        ('{"format": "minisign"}', r"not a bin-daemon-model-signature/1 file"),
    ],
)
def test_unsigned_or_unreadable_signature_is_one_clear_line(tmp_path, key, content, message):
    folder = make_model(tmp_path / "m")
    if content is not None:
        (folder / SIGNATURE_FILE).write_text(content)
    with pytest.raises(SignatureError, match=message):
        verify_signature(folder, [key[1]])


def test_no_trusted_keys_refuses_even_a_signed_model(tmp_path, key) -> None:
    folder = signed_model(tmp_path, key)
    with pytest.raises(SignatureError, match=r"no trusted keys: set model\.trusted_keys"):
        verify_signature(folder, [])


def test_store_install_checks_the_signature_and_keeps_it(tmp_path, key) -> None:
    script = tmp_path / "fake_classify.py"
    script.write_text(FAKE_CLASSIFY)
    store = ModelStore(tmp_path / "store", classify_command=[sys.executable, str(script)])
    unsigned = make_model(tmp_path / "unsigned")
    with pytest.raises(SignatureError, match="unsigned model"):
        store.install(unsigned, trusted_keys=[key[1]])
    assert not (store.root / "current").exists()
    folder = signed_model(tmp_path, key)
    result = store.install(folder, trusted_keys=[key[1]])
    installed = result.entry.path
    record = json.loads((installed / INSTALL_RECORD).read_text())
    assert record["signed_by"] == signing.key_id(signing.parse_public_key(key[1]))
    # The store's copy is byte for byte what was signed: it still verifies there.
    assert verify_signature(installed, [key[1]]) == record["signed_by"]


def write_config(tmp_path: Path, keys: list[str]) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{trusted_keys: {json.dumps(keys)}}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins: {landfill: {labels: [trash], servo_gpio: 18}}\n"
        "fallback_bin: landfill\n"
    )
    return config


def test_model_install_with_a_config_that_has_keys_refuses_an_unsigned_model(
    tmp_path, key, capsys
) -> None:
    config = write_config(tmp_path, [key[1]])
    store = tmp_path / "store"
    unsigned = make_model(tmp_path / "unsigned")
    argv = ["model", "install", str(unsigned), "--store", str(store), "--config", str(config)]
    assert cli_model.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unsigned model: no model.sig") and err.count("\n") == 1
    assert not (store / "current").exists()
    # `verify` with the same config says who signed a signed one.
    signed = signed_model(tmp_path, key)
    assert cli_model.main(["model", "verify", str(signed), "--config", str(config)]) == 0
    assert "signed by key" in capsys.readouterr().out


def test_config_refuses_a_trusted_key_that_is_not_one(tmp_path) -> None:
    config = write_config(tmp_path, ["not-a-key"])
    with pytest.raises(ConfigError, match=r"config.yaml:1: model.trusted_keys.*not an ed25519"):
        load_config(config)
    config = write_config(tmp_path, ["AAAA"])  # base64, but 3 bytes
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        load_config(config)


@pytest.mark.parametrize(
    "url",
    ["/var/lib/bin-daemon/models/x", "file:///etc/shadow", "models/x.tflite", "C:/x.tflite"],
)
def test_roll_outs_refuse_local_paths(url) -> None:
    with pytest.raises(RolloutError, match="a local path; roll-outs over the network take http"):
        check_url(url)


@pytest.mark.parametrize("url", ["ftp://host/x.tflite", "https:///x.tflite"])
def test_roll_outs_refuse_other_urls(url) -> None:
    with pytest.raises(RolloutError, match="unsupported URL"):
        check_url(url)


def test_roll_outs_take_http_and_https() -> None:
    check_url("https://models.example.org/v7/waste_classifier.tflite")
    check_url("http://10.0.0.2:8000/waste_classifier.tflite")
