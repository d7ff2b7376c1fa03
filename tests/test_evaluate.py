"""`bin-daemon evaluate` with the shipped int8 model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bin_daemon.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data" / "samples"
MODEL = ROOT / "models"


@pytest.fixture
def dataset(tmp_path) -> Path:
    for folder in SAMPLES.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path


def test_json_report_of_the_shipped_model(dataset, capsys):
    assert main(["evaluate", str(dataset), "--model", str(MODEL), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 24 and result["skipped"] == []
    assert set(result) >= {"n", "accuracy", "macro_f1", "labels", "per_class", "confusion"}
    # The samples come from the model's held-out test split: it must sort most of them right.
    assert result["accuracy"] >= 0.8
    rows = result["confusion"]
    for i, label in enumerate(result["labels"]):
        assert sum(rows[i]) == result["per_class"][label]["support"] == 4
        assert result["per_class"][label]["recall"] == pytest.approx(rows[i][i] / 4)


def test_bad_images_are_reported_and_skipped(dataset, capsys):
    (dataset / "glass" / "empty.jpg").write_bytes(b"")
    (dataset / "paper" / "cut.jpg").write_bytes(
        (dataset / "paper" / "paper1.jpg").read_bytes()[:200]
    )
    assert main(["evaluate", str(dataset), "--model", str(MODEL), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 24
    skipped = sorted(Path(s["image"]).name for s in result["skipped"])
    assert skipped == ["cut.jpg", "empty.jpg"]


def test_a_folder_the_model_does_not_know_is_scored_as_wrong(dataset, capsys):
    (dataset / "batteries").mkdir()
    shutil.copy(SAMPLES / "metal" / "metal102.jpg", dataset / "batteries" / "b1.jpg")
    assert main(["evaluate", str(dataset), "--model", str(MODEL)]) == 0
    out = capsys.readouterr().out
    assert "25 images" in out
    assert "folder 'batteries' is not a label of this model" in out


def test_not_a_dataset_is_one_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--model", str(MODEL)]) != 0
    err = capsys.readouterr().err
    assert "no images found in label folders" in err and "Traceback" not in err
