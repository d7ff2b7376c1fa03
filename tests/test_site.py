"""Site learning: the store (durable, bounded, validated), teaching, the head on the real
model, the CLI round trip, and the daemon's records."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest_models import TINY, make_model_dir

from bin_daemon import cli
from bin_daemon.config import parse_config
from bin_daemon.errors import BinDaemonError, ConfigError, ImageError
from bin_daemon.hardware.fakes import image_files
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.preprocess import load_image
from bin_daemon.paths import shipped_models_dir
from bin_daemon.records.journal import journal_fields
from bin_daemon.site.head import SiteHead
from bin_daemon.site.runtime import SiteClassifier
from bin_daemon.site.store import SiteStore, check_label, read_labels
from bin_daemon.site.teach import teach

REPO = Path(__file__).resolve().parents[1]
FIXTURE_EMBEDDING = REPO / "tests" / "data" / "models" / "tiny_uint8_32px_embedding.tflite"


@pytest.fixture(scope="module")
def real() -> Classifier:
    return Classifier.load(shipped_models_dir(), num_threads=2)


@pytest.fixture
def store(tmp_path) -> SiteStore:
    with SiteStore(tmp_path / "site.sqlite3") as opened:
        yield opened


def vector(seed: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).random(d).astype(np.float32)


def glass(samples_dir: Path) -> list[Path]:
    return sorted((samples_dir / "glass").glob("*.jpg"))


# --- the store ---------------------------------------------------------------------------


def test_an_item_taught_again_keeps_only_its_latest_label(store):
    """A correction corrected again (a wrong click fixed on the review page) must not leave the
    same frame in the store under two labels."""
    store.add(label="paper", jpeg=b"\xff\xd8\xffother", embedding=vector(5),
              model_sha256="ab" * 32, source="file:/o.jpg")  # fmt: skip
    first = store.add(label="glass", jpeg=b"\xff\xd8\xffframe", embedding=vector(1),
                      model_sha256="ab" * 32, source="item:x", item_id="x")  # fmt: skip
    before = store.generation()
    second = store.add(label="plastic", jpeg=b"\xff\xd8\xffframe", embedding=vector(1),
                       model_sha256="ab" * 32, source="item:x", item_id="x")  # fmt: skip
    assert second > first and store.counts() == {"paper": 1, "plastic": 1}
    assert [e.id for e in store.examples(label="plastic")] == [second]
    assert store.generation() == before + 1  # one change: the head is refitted once
    full = SiteStore(store.path, quota_mb=store.used_bytes() / 1024 / 1024)
    try:  # refused at the quota: the earlier example is kept, not lost
        with pytest.raises(BinDaemonError, match="full"):
            full.add(label="metal", jpeg=b"\xff\xd8" + b"x" * 4096, embedding=vector(1),
                     model_sha256="ab" * 32, source="item:x", item_id="x")  # fmt: skip
        assert full.counts() == {"paper": 1, "plastic": 1}
    finally:
        full.close()


def test_store_keeps_examples_with_their_embedding_and_counts_changes(store):
    before = store.generation()
    first = store.add(label="paper", jpeg=b"\xff\xd8\xffjpeg", embedding=vector(1),
                      model_sha256="ab" * 32, source="file:/x.jpg")  # fmt: skip
    second = store.add(label="coffee_cup", jpeg=b"\xff\xd8\xffjpeg2", embedding=vector(2),
                       model_sha256="ab" * 32, source="item:x", item_id="x")  # fmt: skip
    assert second > first
    assert store.counts() == {"coffee_cup": 1, "paper": 1}
    assert store.generation() == before + 2
    examples = store.examples()
    assert [e.label for e in examples] == ["paper", "coffee_cup"]
    assert np.array_equal(examples[0].embedding, vector(1))
    assert examples[1].item_id == "x" and examples[1].source == "item:x"
    assert store.jpeg(first) == b"\xff\xd8\xffjpeg"
    assert store.stale("ab" * 32) == [] and store.stale("cd" * 32) == [first, second]
    store.set_embedding(first, vector(3, 4), "cd" * 32)  # re-embedding is not a change
    assert store.generation() == before + 2
    assert store.remove_id(first) and not store.remove_id(first)
    assert store.remove_label("coffee_cup") == 1 and len(store) == 0
    assert store.generation() == before + 4
    # ids are never reused: `remove --id N` can never hit a newer example
    assert store.add(label="paper", jpeg=b"j", embedding=vector(4), model_sha256="ab" * 32,
                     source="s") > second  # fmt: skip


def test_a_change_by_another_connection_is_seen(tmp_path):
    with SiteStore(tmp_path / "s.sqlite3") as daemon, SiteStore(tmp_path / "s.sqlite3") as cli_:
        seen = daemon.generation()
        cli_.add(label="paper", jpeg=b"j", embedding=vector(1), model_sha256="a", source="s")
        assert daemon.generation() == seen + 1


def test_the_quota_refuses_an_example_and_writes_nothing(tmp_path):
    with SiteStore(tmp_path / "s.sqlite3", quota_mb=0.001) as small:  # 1048 bytes
        small.add(label="paper", jpeg=b"j" * 600, embedding=vector(1), model_sha256="a",
                  source="s")  # fmt: skip
        generation = small.generation()
        with pytest.raises(BinDaemonError, match=r"the site store is full .*site.quota_mb"):
            small.add(label="paper", jpeg=b"j" * 600, embedding=vector(2), model_sha256="a",
                      source="s")  # fmt: skip
        assert len(small) == 1 and small.generation() == generation


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", r"the label is empty"),
        ("   ", r"the label is empty"),
        ("Coffee Cup", r"label 'Coffee Cup' is not usable: use 1-40 lower-case"),
        ("../etc", r"label '../etc' is not usable"),
        ("x" * 41, r"is not usable"),
    ],
)
def test_bad_labels_are_one_line(label, message):
    with pytest.raises(BinDaemonError, match=message) as caught:
        check_label(label)
    assert "\n" not in str(caught.value)


def test_good_labels_pass():
    for label in ("paper", "coffee_cup", "e-waste", "pizza_box2"):
        assert check_label(label) == label


def test_an_unopenable_store_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BinDaemonError, match=r"cannot open the site store"):
        SiteStore(blocker / "site.sqlite3")


def test_read_labels_is_read_only_and_empty_without_a_store(tmp_path, store):
    assert read_labels(tmp_path / "none.sqlite3") == []
    assert not (tmp_path / "none.sqlite3").exists()
    store.add(label="food", jpeg=b"j", embedding=vector(1), model_sha256="a", source="s")
    assert read_labels(store.path) == ["food"]


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from bin_daemon.site.store import SiteStore

    store = SiteStore(sys.argv[1])
    rng = np.random.default_rng(0)
    i = 0
    while True:
        new_id = store.add(label="paper", jpeg=bytes(rng.integers(0, 256, 20000, np.uint8)),
                           embedding=rng.random(1280).astype(np.float32),
                           model_sha256="ab" * 32, source=f"file:{i}.jpg")
        print(new_id, flush=True)  # acknowledged: add() returned
        i += 1
    """
)


def test_a_writer_killed_with_sigkill_loses_no_acknowledged_example(tmp_path):
    path = tmp_path / "site.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    acknowledged = []
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 40:
                break
    finally:
        writer.send_signal(signal.SIGKILL)  # mid-write: it never stops adding
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    with SiteStore(path) as reopened:
        stored = {e.id: e for e in reopened.examples()}
        assert set(acknowledged) <= set(stored)  # every acknowledged example is there ...
        assert all(e.embedding.shape == (1280,) for e in stored.values())  # ... and whole
        assert all(reopened.jpeg(i) is not None and len(reopened.jpeg(i)) == 20000 for i in stored)
        assert reopened.generation() == len(stored)
    check = sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0]
    assert check == "ok"


# --- teaching ----------------------------------------------------------------------------


def test_teach_keeps_a_jpeg_file_as_it_is_with_the_models_embedding(store, real, samples_dir):
    path = glass(samples_dir)[0]
    new_id = teach(store, real, label="bottle", rgb_or_path=path)
    (example,) = store.examples()
    assert example.id == new_id and example.label == "bottle"
    assert example.source == f"file:{path.resolve()}" and example.model_sha256 == real.sha256
    assert store.jpeg(new_id) == path.read_bytes()
    expected = real.classify(load_image(path)).embedding
    assert np.array_equal(example.embedding, expected)


def test_teach_a_frame_from_memory(store, real, samples_dir):
    rgb = load_image(glass(samples_dir)[1])
    teach(store, real, label="glass", rgb_or_path=rgb, item_id="20261124T081500123Z-a1b2-0042")
    (example,) = store.examples()
    assert example.source == "item:20261124T081500123Z-a1b2-0042"
    assert store.jpeg(example.id)[:3] == b"\xff\xd8\xff"


def test_a_large_photo_is_scaled_down_before_it_is_kept(store, real):
    big = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    new_id = teach(store, real, label="paper", rgb_or_path=big)
    from bin_daemon.model.preprocess import decode_image

    assert max(decode_image(store.jpeg(new_id)).shape[:2]) == 1024


@pytest.mark.parametrize("kind", ["text", "missing", "empty", "label"])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, store, real, samples_dir, kind):
    image: Path = glass(samples_dir)[0]
    label = "bottle"
    if kind == "text":
        image = tmp_path / "notes.jpg"
        image.write_text("not an image")
    elif kind == "missing":
        image = tmp_path / "gone.jpg"
    elif kind == "empty":
        image = tmp_path / "empty.jpg"
        image.write_bytes(b"")
    else:
        label = ""
    generation = store.generation()
    with pytest.raises(BinDaemonError) as caught:
        teach(store, real, label=label, rgb_or_path=image)
    assert "\n" not in str(caught.value)
    if kind != "label":
        assert isinstance(caught.value, ImageError) and str(image) in str(caught.value)
    assert len(store) == 0 and store.generation() == generation


def test_a_model_without_embedding_cannot_teach(tmp_path, store, samples_dir):
    plain = Classifier.load(make_model_dir(tmp_path, TINY), num_threads=1)
    with pytest.raises(BinDaemonError, match=r"this model has no embedding output"):
        teach(store, plain, label="paper", rgb_or_path=glass(samples_dir)[0])
    assert len(store) == 0


# --- the head ----------------------------------------------------------------------------


def test_head_fit_refuses_bad_input_with_one_line():
    labels = ["paper", "glass"]
    with pytest.raises(BinDaemonError, match=r"2 embeddings but 1 labels"):
        SiteHead.fit(np.ones((2, 4), np.float32), ["paper"], model_labels=labels)
    with pytest.raises(BinDaemonError, match=r"2-D array"):
        SiteHead.fit(np.ones(4, np.float32), ["paper"], model_labels=labels)
    with pytest.raises(BinDaemonError, match=r"no examples"):
        SiteHead.fit(np.ones((0, 4), np.float32), [], model_labels=labels)


def test_head_on_the_real_model_learns_a_new_label_from_two_photos(real, samples_dir):
    files = image_files(samples_dir)
    predictions = {path: real.classify(load_image(path)) for path in files}
    taught = glass(samples_dir)[:2]
    head = SiteHead.fit(
        np.stack([predictions[p].embedding for p in taught]),
        ["bottle"] * len(taught),
        model_labels=real.labels,
        model_path=real.model_path,
    )
    assert head.labels == (*real.labels, "bottle")
    decisions = {path: head.apply(predictions[path].embedding, predictions[path].scores)
                 for path in files}  # fmt: skip
    for decision in decisions.values():
        assert decision.probs.sum() == pytest.approx(1.0) and len(decision.probs) == 7
    top = {p: d.labels[int(np.argmax(d.probs))] for p, d in decisions.items()}
    assert all(top[p] == "bottle" for p in taught)
    # unseen glass photos are not required to turn into "bottle": heads that generalise a
    # new label that eagerly took over the other classes (docs/SITE.md, new class)
    others = [p for p in files if p.parent.name != "glass"]
    changed = [p.name for p in others if decisions[p].changed]
    assert len(changed) <= 1, f"the new label took over other classes: {changed}"
    for p in others:
        if not decisions[p].changed:
            assert top[p] == predictions[p].label


def test_site_classifier_refits_when_another_process_changes_the_store(tmp_path, real, samples_dir):
    path = tmp_path / "site.sqlite3"
    with SiteStore(path) as daemon_store, SiteStore(path) as cli_store:
        site = SiteClassifier(real, daemon_store)
        assert site.refresh(force=True) and site.head is None
        assert site.classify(load_image(glass(samples_dir)[0])).label == "glass"
        for image in glass(samples_dir)[:2]:
            teach(cli_store, real, label="bottle", rgb_or_path=image)
        assert site.refresh()  # the change counter moved
        assert not site.refresh()  # and now it has not
        assert "bottle" in site.labels and site.examples == 2
        prediction = site.classify(load_image(glass(samples_dir)[0]))
        assert prediction.label == "bottle" and prediction.site
        assert prediction.model_label == "glass" and prediction.embedding is not None
        cli_store.remove_label("bottle")
        assert site.refresh() and site.head is None and "bottle" not in site.labels


def test_the_prior_shift_applies_to_the_site_heads_output_once(tmp_path, samples_dir):
    from bin_daemon.model.classifier import shift_priors

    model = Classifier.load(shipped_models_dir(), num_threads=2)
    with SiteStore(tmp_path / "site.sqlite3") as store:
        for image in glass(samples_dir)[:2]:
            teach(store, model, label="bottle", rgb_or_path=image)
        site = SiteClassifier(model, store)
        assert site.refresh(force=True) and site.head.from_model_layer
        bias = {"glass": 2.0, "bottle": -2.0}
        model.class_bias = bias
        for path in [*glass(samples_dir), *sorted((samples_dir / "plastic").glob("*.jpg"))]:
            image = load_image(path)
            own = model.classify(image)  # the model's own prediction, shifted
            decision = site.head.apply(own.embedding, own.scores)
            expected = shift_priors(decision.probs, decision.labels, bias)
            prediction = site.classify(image)
            np.testing.assert_allclose(prediction.scores, expected)
            assert prediction.label == decision.labels[int(np.argmax(expected))]
            assert prediction.model_label == own.label
            assert prediction.site == (prediction.label != own.label)
        taught = site.classify(load_image(glass(samples_dir)[0]))
        model.class_bias = {}
        assert site.classify(load_image(glass(samples_dir)[0])).scores[-1] > taught.scores[-1]


def test_examples_are_embedded_again_for_another_model(tmp_path, real, samples_dir):
    with SiteStore(tmp_path / "site.sqlite3") as store:
        for image in glass(samples_dir)[:2]:
            teach(store, real, label="bottle", rgb_or_path=image)
        other = Classifier.load(make_model_dir(tmp_path, FIXTURE_EMBEDDING), num_threads=1)
        read_only = SiteClassifier(other, store, persist=False)  # classify/evaluate
        read_only.refresh(force=True)
        assert read_only.head is not None and "bottle" in read_only.labels
        assert read_only.classify(load_image(glass(samples_dir)[0])).embedding.shape == (4,)
        assert {e.model_sha256 for e in store.examples()} == {real.sha256}  # untouched
        daemon = SiteClassifier(other, store)
        daemon.refresh(force=True)
        assert {e.model_sha256 for e in store.examples()} == {other.sha256}
        assert {e.embedding.shape for e in store.examples()} == {(4,)}


def test_a_model_without_embedding_runs_alone_and_says_why(tmp_path, store, real, samples_dir):
    teach(store, real, label="bottle", rgb_or_path=glass(samples_dir)[0])
    plain = Classifier.load(make_model_dir(tmp_path, TINY), num_threads=1)
    site = SiteClassifier(plain, store)
    site.refresh(force=True)
    assert site.head is None and "no embedding output" in site.describe()
    assert site.classify(np.zeros((32, 32, 3), np.uint8)).label in plain.labels


# --- the command line --------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip(tmp_path, capsys, samples_dir):
    state = str(tmp_path / "state")
    taught = [str(p) for p in glass(samples_dir)[:2]]
    code, out, _ = run_cli(capsys, "site", "add", "--label", "bottle", "--state-dir", state,
                           *taught)  # fmt: skip
    assert code == 0 and out.count("added #") == 2

    code, out, _ = run_cli(capsys, "site", "list", "--json", "--state-dir", state)
    listing = json.loads(out)
    assert listing["labels"] == {"bottle": 2} and listing["site_only_labels"] == ["bottle"]
    assert [item["id"] for item in listing["items"]] == [1, 2]

    code, out, _ = run_cli(capsys, "site", "list", "--examples", "--state-dir", state)
    assert "bottle" in out and "(new: not a model label)" in out and "#1" in out

    held_out = str(glass(samples_dir)[3])
    code, out, _ = run_cli(capsys, "classify", "--json", "--state-dir", state, *taught, held_out)
    results = json.loads(out)
    assert [r["label"] for r in results[:2]] == ["bottle", "bottle"]
    assert all(r["site"] and r["model_label"] == "glass" for r in results[:2])
    assert results[2]["model_label"] == "glass" and isinstance(results[2]["site"], bool)
    code, out, _ = run_cli(capsys, "classify", "--state-dir", state, taught[0])
    assert out.startswith("site store: ") and "2 examples applied (bottle 2)" in out
    assert "; new labels imprinted (no model label taught)" in out  # how the head works
    assert "(site: the model said glass)" in out
    code, out, _ = run_cli(capsys, "classify", "--json", "--no-site", "--state-dir", state,
                           held_out)  # fmt: skip
    assert json.loads(out)[0]["label"] == "glass" and "site" not in json.loads(out)[0]

    export = tmp_path / "export"
    code, out, _ = run_cli(capsys, "site", "export", str(export), "--state-dir", state)
    assert code == 0 and "wrote 2 JPEGs in 1 class folders" in out
    exported = sorted(export.rglob("*.jpg"))
    assert [p.relative_to(export).as_posix() for p in exported] == [
        "bottle/site-000001.jpg", "bottle/site-000002.jpg"]  # fmt: skip
    assert exported[0].read_bytes() == Path(taught[0]).read_bytes()
    from bin_daemon.model.evaluate import dataset_images  # the layout `train --data` reads

    assert [label for label, _ in dataset_images(export)] == ["bottle", "bottle"]

    code, out, _ = run_cli(capsys, "evaluate", str(export), "--state-dir", state)
    assert code == 0 and "site store: " in out and "2 examples applied" in out
    code, out, _ = run_cli(capsys, "evaluate", str(export), "--no-site", "--state-dir", state)
    assert "site store: off (--no-site)" in out

    code, out, _ = run_cli(capsys, "site", "remove", "--id", "1", "--state-dir", state)
    assert code == 0 and "removed example #1" in out
    code, _, err = run_cli(capsys, "site", "remove", "--id", "9" * 30, "--state-dir", state)
    assert code == 1 and err.count("\n") == 1 and "no example #999" in err  # past SQLite's ints
    code, out, _ = run_cli(capsys, "site", "remove", "--label", "bottle", "--state-dir", state)
    assert code == 0 and "removed 1 examples of bottle" in out
    code, _, err = run_cli(capsys, "site", "remove", "--label", "bottle", "--state-dir", state)
    assert code == 1 and err.count("\n") == 1 and "no examples of 'bottle'" in err


def test_cli_add_from_the_spool_by_item_id(tmp_path, capsys, samples_dir):
    state = tmp_path / "state"
    item_id = "20261124T081500123Z-a1b2c3-0042"
    (state / "spool").mkdir(parents=True)
    source = glass(samples_dir)[0]
    (state / "spool" / f"{item_id}.jpg").write_bytes(source.read_bytes())
    code, out, _ = run_cli(capsys, "site", "add", "--label", "glass", "--item", item_id,
                           "--state-dir", str(state))  # fmt: skip
    assert code == 0 and f"item:{item_id}" in out
    with SiteStore(state / "site.sqlite3") as store:
        (example,) = store.examples()
        assert example.item_id == item_id and store.jpeg(example.id) == source.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--item", "20261124T081500123Z-a1b2c3-0042"], "no spooled frame in"),
        (["--item", "../../etc/passwd"], "not an item id"),
        ([str(REPO / "README.md")], "README.md: not a decodable image"),
        (["nowhere.jpg"], "nowhere.jpg: cannot read"),
    ],
)
def test_cli_bad_input_is_one_line_and_adds_nothing(tmp_path, capsys, samples_dir, args, message):
    state = tmp_path / "state"
    good = str(glass(samples_dir)[0])
    extra = [] if args[0] == "--item" else [good]  # a good image next to the bad one
    code, out, err = run_cli(capsys, "site", "add", "--label", "bottle", "--state-dir",
                             str(state), *extra, *args)  # fmt: skip
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and message in err and err.rstrip().endswith("nothing added")
    if (state / "site.sqlite3").exists():
        assert read_labels(state / "site.sqlite3") == []


def test_cli_empty_label_is_one_line(tmp_path, capsys, samples_dir):
    code, _, err = run_cli(capsys, "site", "add", "--label", "", "--state-dir",
                           str(tmp_path), str(glass(samples_dir)[0]))  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "the label is empty" in err
    assert not (tmp_path / "site.sqlite3").exists()


def test_cli_list_without_a_store(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "site", "list", "--state-dir", str(tmp_path))
    assert code == 0 and "no site store yet" in out


def test_cli_uses_state_directory_like_the_daemon(tmp_path, capsys, samples_dir, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "svc"))
    code, out, _ = run_cli(capsys, "site", "add", "--label", "bottle",
                           str(glass(samples_dir)[0]))  # fmt: skip
    assert code == 0 and str(tmp_path / "svc" / "site.sqlite3") in out


# --- check-config and the daemon ---------------------------------------------------------

SITE_CONFIG = (
    "sensor: {type: ir, gpio: 17}\n"
    "bins:\n"
    "  recycling: {labels: [cardboard, paper, metal, plastic], servo_gpio: 12}\n"
    "  glass: {labels: [glass, bottle], servo_gpio: 13}\n"
    "  landfill: {labels: [trash], servo_gpio: 18}\n"
    "fallback_bin: landfill\n"
    "model: {unsure_threshold: 0.0}\n"
)


def test_check_labels_accepts_site_labels_and_names_unknown_ones():
    config = parse_config(SITE_CONFIG, source="c.yaml")
    model = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    with pytest.raises(ConfigError, match=r"'bottle' not among the model's labels .* nor taught"):
        config.check_labels(model)
    assert config.check_labels(model, ["bottle"]) == []
    notes = config.check_labels(model, ["bottle", "food"])
    assert notes == ["label 'food' is in no bin: it goes to the fallback bin 'landfill'"]
    with pytest.raises(ConfigError, match=r"'bottle' not among .* nor the site store's \(food\)"):
        config.check_labels(model, ["food"])


def test_check_config_knows_the_site_stores_labels(tmp_path, capsys, samples_dir, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    config = tmp_path / "config.yaml"
    config.write_text(SITE_CONFIG)
    code, _, err = run_cli(capsys, "check-config", "--config", str(config))
    assert code == 2 and "bins.glass.labels: 'bottle' not among" in err
    run_cli(capsys, "site", "add", "--label", "bottle", str(glass(samples_dir)[0]))
    code, out, _ = run_cli(capsys, "check-config", "--config", str(config))
    assert code == 0 and ": OK:" in out


def test_every_record_says_whether_the_site_changed_it(tmp_path, capsys, samples_dir, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    config = tmp_path / "config.yaml"
    config.write_text(SITE_CONFIG)
    taught = glass(samples_dir)[:2]
    run_cli(capsys, "site", "add", "--label", "bottle", *map(str, taught))
    events = tmp_path / "events.jsonl"
    code, out, _ = run_cli(capsys, "run", "--config", str(config), "--hardware", "fake",
                           "--images", str(samples_dir / "glass"), "--max-items", "4",
                           "--events", str(events))  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert all(isinstance(r["site"], bool) for r in records)
    changed = [r for r in records if r["site"]]
    assert changed and all(r["label"] == "bottle" and r["model_label"] == "glass" for r in changed)
    assert all(r["bin"] == "glass" for r in changed)  # bottle is in the glass bin
    assert all("model_label" not in r for r in records if not r["site"])
    assert "SITE (model: glass)" in out
    from bin_daemon.records.eventlog import read_events

    logged = list(read_events(tmp_path / "state" / "events.sqlite3"))
    assert [r["site"] for r in logged] == [r["site"] for r in records]
    from bin_daemon.records.events import SortEvent

    event = SortEvent(**{k: v for k, v in records[0].items() if k != "model_label"})
    assert journal_fields(event)["SITE"] == int(records[0]["site"])


def test_the_daemon_refits_between_items_when_the_store_changes(
    tmp_path, real, samples_dir, monkeypatch
):
    from bin_daemon.loop.policy import Policy
    from bin_daemon.loop.service import RunOptions, Service
    from bin_daemon.loop.site_link import SITE_CHECK_EVERY_S

    now = [0.0]
    service = Service(RunOptions(), monotonic=lambda: now[0])
    path = tmp_path / "site.sqlite3"
    config = parse_config(SITE_CONFIG.replace("unsure_threshold: 0.0", "unsure_threshold: null")
                          + f"site: {{path: {path}}}\n", source="<test>")  # fmt: skip
    service._config = config
    service._policy = Policy(config.bin_for_label(), config.fallback_bin, 0.85)
    service.site_link.replace(service.site_link.open(config, real))
    assert service.site.head is None
    with SiteStore(path) as other:  # `bin-daemon site add` in another process
        for image in glass(samples_dir)[:2]:
            teach(other, real, label="bottle", rgb_or_path=image)
    now[0] += SITE_CHECK_EVERY_S / 2
    service._refresh_site()
    assert service.site.head is None  # checked at most every SITE_CHECK_EVERY_S
    now[0] += SITE_CHECK_EVERY_S
    service._refresh_site()
    assert service.site.head is not None and "bottle" in service.site.labels
    assert service._decide("bottle", 0.6).unsure  # the card's 0.85 while the head has none
    # a head that recalibrates a threshold: the policy takes it at the refit
    fit = SiteHead.fit.__func__

    def recalibrating_fit(cls, *args, **kwargs):
        head = fit(cls, *args, **kwargs)
        head.unsure_threshold = 0.5
        return head

    monkeypatch.setattr(SiteHead, "fit", classmethod(recalibrating_fit))
    with SiteStore(path) as other:
        teach(other, real, label="bottle", rgb_or_path=glass(samples_dir)[2])
    now[0] += SITE_CHECK_EVERY_S
    service._refresh_site()
    decision = service._decide("bottle", 0.6)
    assert decision.bin == "glass" and not decision.unsure
    assert service._policy.unsure_threshold == 0.5
    service.site_link.close()


def test_the_unsure_threshold_is_the_configs_else_the_heads_else_the_cards(real):
    from types import SimpleNamespace

    from bin_daemon.loop.service import unsure_threshold

    configured = parse_config(SITE_CONFIG.replace("unsure_threshold: 0.0", "unsure_threshold: 0.3"))
    unset = parse_config(SITE_CONFIG.replace("unsure_threshold: 0.0", "unsure_threshold: null"))
    head_says = SimpleNamespace(unsure_threshold=0.5, card_unsure_threshold=0.85)
    assert unsure_threshold(configured, head_says) == 0.3
    assert unsure_threshold(unset, head_says) == 0.5
    card = json.loads((shipped_models_dir() / "model_card.json").read_text())
    assert unsure_threshold(unset, real) == real.card_unsure_threshold == card["unsure_threshold"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as `sudo bin-daemon site add` runs")
def test_sudo_site_add_leaves_the_store_to_the_service_user(tmp_path, capsys, samples_dir):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4321, 4321)  # the bin-daemon user's folder
    code, _, _ = run_cli(capsys, "site", "add", "--label", "glass", "--state-dir", str(state),
                         str(glass(samples_dir)[0]))  # fmt: skip
    assert code == 0
    owners = {p.name: p.stat().st_uid for p in state.iterdir()}
    assert owners and set(owners.values()) == {4321}, owners


def test_a_head_that_fails_on_an_item_leaves_it_the_models_label(
    tmp_path, store, real, samples_dir
):
    teach(store, real, label="bottle", rgb_or_path=glass(samples_dir)[0])
    site = SiteClassifier(real, store)
    site.refresh(force=True)

    class Broken:
        labels = site.head.labels
        unsure_threshold = None

        def apply(self, embedding, model_probs):
            raise BinDaemonError("site head: broken")

    site.head = Broken()
    prediction = site.classify(load_image(glass(samples_dir)[0]))
    assert prediction.label == "glass" and not getattr(prediction, "site", False)
    assert site.head is None and "broken" in site.describe()
