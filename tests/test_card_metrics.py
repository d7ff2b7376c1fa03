"""`python -m bin_daemon.training.card_metrics`: bin-level and TTA figures written into a card.

The real int8 model on a small split made of the committed samples (two val and two test
images per class), so the command runs end to end in seconds.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the card rendering needs the [train] extra")

from bin_daemon.training import card_metrics
from bin_daemon.training.card import render_markdown

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data" / "samples"
MODEL = ROOT / "models"


# A single-split run's card (the kind card_metrics completes): the one of the model shipped
# before the whole-pool model, kept whole; make_model_dir gives it the shipped model's identity.
SINGLE_SPLIT_CARD = ROOT / "tests" / "data" / "models" / "single_split_model_card.json"
SHIPPED_IDENTITY = (
    "version", "model_file", "sha256", "size_bytes", "labels", "backbone", "input",
    "temperature", "unsure_threshold", "embedding", "embedding_reference",
)  # fmt: skip


def single_split_card() -> dict:
    """The single-split card, describing the shipped model file (its sha256, input, labels)."""
    card = json.loads(SINGLE_SPLIT_CARD.read_text())
    shipped = json.loads((MODEL / "model_card.json").read_text())
    return card | {k: shipped[k] for k in SHIPPED_IDENTITY if k in shipped}


def make_model_dir(tmp_path: Path) -> Path:
    """The shipped model file with a single-split card and a split of the samples: per class
    2 val, 2 test images."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("waste_classifier.tflite", "labels.txt"):
        shutil.copy(MODEL / name, folder / name)
    (folder / "model_card.json").write_text(json.dumps(single_split_card(), indent=2) + "\n")
    with (folder / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "sha256", "subset"])
        for label_dir in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
            for i, image in enumerate(sorted(label_dir.glob("*.jpg"))):
                digest = hashlib.sha256(image.read_bytes()).hexdigest()
                path = f"{label_dir.name}/{image.name}"
                writer.writerow([path, label_dir.name, digest, "val" if i < 2 else "test"])
    return folder


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path)


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory) -> tuple[Path, dict, dict, str]:
    """A model folder before and after the command ran once: (folder, before, after, stdout)."""
    folder = make_model_dir(tmp_path_factory.mktemp("refreshed"))
    before = json.loads((folder / "model_card.json").read_text())
    args = [str(folder), "--data", str(SAMPLES), "--latency-runs", "2"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert card_metrics.main(args) == 0
    return folder, before, json.loads((folder / "model_card.json").read_text()), out.getvalue()


def run(model_dir: Path, *extra: str) -> dict:
    args = [str(model_dir), "--data", str(SAMPLES), "--latency-runs", "2", *extra]
    assert card_metrics.main(args) == 0
    return json.loads((model_dir / "model_card.json").read_text())


def test_writes_bin_level_and_tta_figures_and_keeps_the_rest(refreshed):
    model_dir, before, card, out = refreshed
    bins = card["metrics"]["bin_level"]
    assert bins["policy"]["recycling_bins"] == ["recycling", "glass"]
    assert bins["policy"]["unsure_threshold"] == before["unsure_threshold"]
    for view in ("test", "test_bin_camera"):  # rows: 8 recycling, 2 glass, 2 landfill images
        assert [sum(row) for row in bins[view]["top1"]["confusion"]] == [8, 2, 2]
        assert bins[view]["at_threshold"]["n"] == 12
    # the card's own confusion is of its 302 test images, not of these 12
    assert bins["matches_card_test_confusion"] is False and "DIFFERS from the card" in out
    assert bins["model_sha256"] == before["sha256"]
    assert bins["computed"]["config"] == "the bundled default config"
    results = card["metrics"]["tta"]["results"]
    assert set(results) == {"val", "test"}
    for subset in results.values():
        for view in ("clean", "bin_camera"):
            assert subset[view]["none"]["n"] == subset[view]["flip"]["n"] == 12
    latency = card["metrics"]["tta"]["latency_ms"]
    assert latency["none_p50"] > 0 and latency["flip_p50"] > 0 and latency["runs"] == 2
    # the shipped backbone row gains its bin accuracies; nothing else in the card changes
    shipped = card["backbones"][0]
    assert shipped["backbone"].endswith("(shipped)")
    assert shipped["int8_bin_accuracy"] == bins["test"]["top1"]["bin_accuracy"]
    assert shipped["val_bin_accuracy"] == results["val"]["clean"]["none"]["bin_accuracy"]

    def without_bins(row: dict) -> dict:
        return {k: v for k, v in row.items() if "bin_accuracy" not in k}

    assert without_bins(shipped) == without_bins(before["backbones"][0])
    assert card["backbones"][1:] == before["backbones"][1:]
    assert {k: v for k, v in card.items() if k not in {"metrics", "backbones"}} == {
        k: v for k, v in before.items() if k not in {"metrics", "backbones"}
    }
    new = {"bin_level", "tta"}
    assert {k: v for k, v in card["metrics"].items() if k not in new} == {
        k: v for k, v in before["metrics"].items() if k not in new
    }
    markdown = (model_dir / "MODEL_CARD.md").read_text()
    assert "### Bin level (int8, test split)" in markdown
    assert "### Test-time augmentation (`model.tta: flip`)" in markdown
    assert "top-1 confusion matrix **differs from** the one above" in markdown


def test_clean_test_figures_are_those_of_evaluate_on_the_same_images(refreshed, tmp_path, capsys):
    from bin_daemon.cli import main

    model_dir, _, card, _ = refreshed
    test_dir = tmp_path / "test_images"
    with (model_dir / "split.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["subset"] == "test":
                (test_dir / row["label"]).mkdir(parents=True, exist_ok=True)
                shutil.copy(SAMPLES / row["path"], test_dir / row["path"])
    capsys.readouterr()
    assert main(["evaluate", str(test_dir), "--model", str(model_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["bin_level"]
    test = card["metrics"]["bin_level"]["test"]
    assert test["top1"] == evaluated["top1"]
    assert test["at_threshold"] == evaluated["at_threshold"]
    assert (
        card["metrics"]["tta"]["results"]["test"]["clean"]["none"]["bin_accuracy"]
        == (evaluated["top1"]["bin_accuracy"])
    )


def test_dry_run_writes_nothing(model_dir):
    before = (model_dir / "model_card.json").read_text()
    run(model_dir, "--dry-run")
    assert (model_dir / "model_card.json").read_text() == before
    assert not (model_dir / "MODEL_CARD.md").exists()


def test_an_image_that_is_not_the_splits_is_one_clear_error(model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    (data / "glass" / "glass1.jpg").write_bytes(b"not the same image")
    assert card_metrics.main([str(model_dir), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("card_metrics: ") and "sha256 differs from the split's" in err


def test_a_card_without_the_figures_renders_as_before():
    card = single_split_card()
    plain = {
        **card,
        "metrics": {k: v for k, v in card["metrics"].items() if k not in {"bin_level", "tta"}},
    }
    markdown = render_markdown(plain)
    assert "### Bin level" not in markdown and "Test-time augmentation" not in markdown
    assert "## Backbones compared" in markdown
