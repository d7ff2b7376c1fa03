"""Model roll-outs over a real Mosquitto broker, the models served by a real HTTP server:
refused (malformed, wrong sha256, local paths, unsigned, signed by another key, altered after
signing, no trusted keys), applied (the daemon switches between items), rolled back (the
daemon cannot run what passed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from conftest_models import TINY, make_model_dir
from conftest_mqtt import Subscriber, publish, wait_until
from test_model_store import FAKE_CLASSIFY, make_model

from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.model import signing
from bin_daemon.model.store import LABELS_FILE, MODEL_FILE, SIGNATURE_FILE, ModelStore

BIN = "test-bin"
REPORT = f"smartbin/{BIN}/status/model"
OWN = f"smartbin/{BIN}/model"
FLEET = "smartbin/all/model"


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


class ModelServer:
    """A real HTTP server on 127.0.0.1 serving ``folder`` (the fleet owner's model host)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish_model(self, name: str, source: Path, key: Path | None) -> tuple[str, str]:
        """Copy a model folder to ``name/`` (signed with ``key`` if given): (url, sha256)."""
        target = self.folder / name
        shutil.copytree(source, target)
        (target / SIGNATURE_FILE).unlink(missing_ok=True)
        if key is not None:
            names = [MODEL_FILE, LABELS_FILE, "model_card.json"]
            signing.sign_folder(target, names, signing.load_private_key(key))
        sha = hashlib.sha256((target / MODEL_FILE).read_bytes()).hexdigest()
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/{name}/{MODEL_FILE}", sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def models_http(tmp_path):
    server = ModelServer(tmp_path / "www")
    yield server
    server.close()


@pytest.fixture
def fleet_key(tmp_path) -> tuple[Path, str]:
    """The fleet owner's key pair: (private key file, public key for the bins' config)."""
    private = tmp_path / "fleet-key"
    public = signing.generate_key(private)
    return private, signing.public_key_text(public)


def store_config(
    tmp_path: Path, port: int, trusted_keys: list[str] | None = None
) -> tuple[Path, ModelStore]:
    """A model store whose current model is the tiny test model, and a config running it."""
    store = ModelStore(tmp_path / "store")
    store.install(make_model_dir(tmp_path, TINY), run_self_test=False)
    config = tmp_path / "config.yaml"
    keys = json.dumps(trusted_keys or [])
    config.write_text(
        f"model: {{dir: {store.root / 'current'}, unsure_threshold: 0.0, trusted_keys: {keys}}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
        "  glass: {labels: [glass], servo_gpio: 13}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
        "timing: {hold_open_s: 0.02, lid_move_s: 0.01, cooldown_s: 0.05, max_open_s: 5}\n"
        f"telemetry: {{mqtt: {{host: 127.0.0.1, port: {port}, bin_id: {BIN}, drain_s: 2}}}}\n"
    )
    return config, store


class Running:
    """The daemon in a thread: fake hardware in real time (short holds), until stopped."""

    def __init__(self, config: Path, samples_dir: Path, **kwargs) -> None:
        options = RunOptions(config, "fake", samples_dir, realtime=True)
        self.service = Service(options, stdout=io.StringIO(), **kwargs)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.service.run()))

    def __enter__(self) -> Service:
        self.thread.start()
        wait_until(lambda: self.service.sorter is not None, 20, "the daemon sorting")
        return self.service

    def __exit__(self, *_) -> None:
        self.service.stop.set()
        self.thread.join(30)
        assert self.result == [0]


def reports(watcher: Subscriber) -> list[dict]:
    return watcher.events(REPORT)


def items(service: Service) -> int:
    return service.sorter.counts.items


def test_malformed_wrong_sha256_and_local_roll_outs_are_refused_and_reported(
    tmp_path, samples_dir, broker, model_dir, models_http, fleet_key
):
    config, store = store_config(tmp_path, broker.port, [fleet_key[1]])
    before = os.readlink(store.root / "current")
    watcher = Subscriber(broker.port, [REPORT])
    real = model_dir / MODEL_FILE
    url, sha = models_http.publish_model("v2", model_dir, fleet_key[0])
    with Running(config, samples_dir) as service:
        bad = [
            b"{not json",
            json.dumps({"url": url}),  # no sha256
            json.dumps({"url": url, "sha256": "abc123"}),  # not 64 hex digits
            json.dumps({"url": url, "sha256": "0" * 64}),  # the wrong file's
            # A signed model on the bin's own disk is still refused: no local paths from MQTT.
            json.dumps({"url": str(real), "sha256": sha}),
            json.dumps({"url": real.as_uri(), "sha256": sha}),
        ]
        for n, payload in enumerate(bad, 1):
            publish(broker.port, OWN, payload, retain=True)
            wait_until(lambda n=n: len(reports(watcher)) >= n, 15, f"report {n}")
        got = reports(watcher)
        assert [r["result"] for r in got] == ["refused"] * 6
        assert "not JSON" in got[0]["reason"]
        assert "missing sha256" in got[1]["reason"]
        assert "64 hex digits" in got[2]["reason"]
        assert "sha256 mismatch" in got[3]["reason"] and got[3]["sha256"] == "0" * 64
        for report in got[4:]:
            assert (
                "a local path; roll-outs over the network take http(s) URLs only"
                in (report["reason"])
            )
        assert all(r["model"] == hashlib.sha256(TINY.read_bytes()).hexdigest() for r in got)
        sorted_so_far = items(service)
        wait_until(lambda: items(service) > sorted_so_far + 2, 10, "sorting to go on")
    assert os.readlink(store.root / "current") == before  # nothing installed
    watcher.close()


def test_unsigned_foreign_and_altered_models_are_refused_and_reported(
    tmp_path, samples_dir, broker, model_dir, models_http, fleet_key
):
    config, store = store_config(tmp_path, broker.port, [fleet_key[1]])
    before = os.readlink(store.root / "current")
    watcher = Subscriber(broker.port, [REPORT])
    stranger = tmp_path / "stranger-key"
    signing.generate_key(stranger)
    unsigned = models_http.publish_model("unsigned", model_dir, None)
    foreign = models_http.publish_model("foreign", model_dir, stranger)
    altered = models_http.publish_model("altered", model_dir, fleet_key[0])
    labels = models_http.folder / "altered" / LABELS_FILE  # e.g. two labels swapped
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with Running(config, samples_dir) as service:
        for n, (url, sha) in enumerate([unsigned, foreign, altered], 1):
            # The same model bytes each time: a new URL makes it a new roll-out.
            publish(broker.port, OWN, json.dumps({"url": url, "sha256": sha}), retain=True)
            wait_until(lambda n=n: len(reports(watcher)) >= n, 15, f"report {n}")
        got = reports(watcher)
        assert [r["result"] for r in got] == ["refused"] * 3, got
        assert got[0]["reason"].startswith("unsigned model: no signature beside it")
        assert "/unsigned/model.sig: download failed" in got[0]["reason"]
        assert got[1]["reason"].startswith("bad signature: model.sig was not signed by a trusted")
        assert got[2]["reason"].startswith(
            "bad signature: labels.txt is not the file that was signed"
        )
        sorted_so_far = items(service)
        wait_until(lambda: items(service) > sorted_so_far + 2, 10, "sorting to go on")
    assert os.readlink(store.root / "current") == before
    watcher.close()


def test_a_bin_without_trusted_keys_refuses_every_roll_out(
    tmp_path, samples_dir, broker, model_dir, models_http, fleet_key, caplog
):
    config, store = store_config(tmp_path, broker.port, trusted_keys=[])
    before = os.readlink(store.root / "current")
    url, sha = models_http.publish_model("v2", model_dir, fleet_key[0])
    watcher = Subscriber(broker.port, [REPORT])
    with Running(config, samples_dir):
        publish(broker.port, FLEET, json.dumps({"url": url, "sha256": sha}), retain=True)
        wait_until(lambda: reports(watcher), 15, "the roll-out's report")
        report = reports(watcher)[-1]
        assert report["result"] == "refused"
        assert report["reason"].startswith("no trusted keys: set model.trusted_keys")
    # ... and said so at start, before any roll-out came.
    assert "model roll-outs over MQTT will be refused: no trusted keys" in caplog.text
    assert os.readlink(store.root / "current") == before
    watcher.close()


def test_a_good_signed_fleet_roll_out_is_self_tested_and_applied_between_items(
    tmp_path, samples_dir, broker, model_dir, models_http, fleet_key
):
    config, store = store_config(tmp_path, broker.port, [fleet_key[1]])
    old = os.readlink(store.root / "current")
    url, sha = models_http.publish_model("v2", model_dir, fleet_key[0])
    watcher = Subscriber(broker.port, [REPORT, f"smartbin/{BIN}/events"])
    with Running(config, samples_dir):
        publish(broker.port, FLEET, json.dumps({"url": url, "sha256": sha}), retain=True)
        wait_until(lambda: reports(watcher), 120, "the roll-out's report")  # self-test inside
        report = reports(watcher)[-1]
        assert report["result"] == "applied", report
        assert report["reason"].startswith("self-test passed (6/6 golden images), signed by key")
        assert signing.key_id(signing.parse_public_key(fleet_key[1])) in report["reason"]
        assert report["sha256"] == sha and report["model"] == sha and report["topic"] == FLEET
        wait_until(lambda: any(e["model"] == sha for e in watcher.events(f"smartbin/{BIN}/events")),
                   10, "an item sorted by the new model")  # fmt: skip
        # The same model again, now on the bin's own topic: nothing to do, and said so.
        publish(broker.port, OWN, json.dumps({"url": url + "?again", "sha256": sha}), retain=True)
        wait_until(lambda: len(reports(watcher)) >= 2, 15, "the second report")
        assert reports(watcher)[-1]["result"] == "current"
    assert os.readlink(store.root / "previous") == old
    assert ModelStore(store.root).entry("current").sha256 == sha
    watcher.close()


def test_a_roll_out_the_daemon_cannot_run_is_rolled_back(
    tmp_path, samples_dir, broker, models_http, fleet_key
):
    config, store = store_config(tmp_path, broker.port, [fleet_key[1]])
    old = os.readlink(store.root / "current")
    # A "model" that passes a stand-in self-test but that the real interpreter cannot load.
    script = tmp_path / "fake_classify.py"
    script.write_text(FAKE_CLASSIFY)
    fake = make_model(tmp_path / "fake", version="9.9.9")
    url, sha = models_http.publish_model("fake", fake, fleet_key[0])
    watcher = Subscriber(broker.port, [REPORT])

    def store_factory(root: Path) -> ModelStore:
        return ModelStore(root, classify_command=[sys.executable, str(script)])

    with Running(config, samples_dir, store_factory=store_factory) as service:
        publish(broker.port, OWN, json.dumps({"url": url, "sha256": sha}), retain=True)
        wait_until(lambda: reports(watcher), 30, "the roll-out's report")
        report = reports(watcher)[-1]
        assert report["result"] == "rolled_back", report
        assert report["model"] == hashlib.sha256(TINY.read_bytes()).hexdigest()
        sorted_so_far = items(service)
        wait_until(lambda: items(service) > sorted_so_far + 2, 10, "sorting to go on")
    assert os.readlink(store.root / "current") == old
    watcher.close()
