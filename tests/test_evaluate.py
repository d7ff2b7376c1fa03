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


def card_threshold() -> float:
    return json.loads((MODEL / "model_card.json").read_text())["unsure_threshold"]


def _json(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--model", str(MODEL), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bin_level_figures_under_the_default_policy(dataset, capsys):
    result = _json(capsys, str(dataset))
    bins = result["bin_level"]
    assert bins["policy"]["fallback_bin"] == "landfill"
    assert bins["policy"]["recycling_bins"] == ["recycling", "glass"]
    assert bins["policy"]["unsure_threshold"] == card_threshold()  # the model card's
    top1 = bins["top1"]
    # a right label is always the right bin, so bin accuracy is at least label accuracy
    assert top1["bin_accuracy"] >= result["accuracy"]
    assert sum(map(sum, top1["confusion"])) == top1["n"] == 24
    # 16 recycling, 4 glass, 4 landfill items (four per class) in the rows
    assert [sum(row) for row in top1["confusion"]] == [16, 4, 4]
    at = bins["at_threshold"]
    assert at["n"] == 24 and 0 < at["covered"] <= 24
    assert at["coverage"] == pytest.approx(at["covered"] / 24, abs=1e-4)
    for name in ("recycling", "glass"):  # an unsure item never lands in a recycling bin
        assert at["contamination"][name]["sent"] <= top1["contamination"][name]["sent"]


def test_threshold_one_sends_everything_to_the_fallback_bin(dataset, capsys):
    # uint8 probabilities top out at 255/256, so nothing reaches 1.0: every item is unsure
    at = _json(capsys, str(dataset), "--unsure-threshold", "1.0")["bin_level"]["at_threshold"]
    assert at["covered"] == 0 and at["accuracy_covered"] is None
    assert at["bin_accuracy"] == pytest.approx(4 / 24, abs=1e-4)  # only trash was meant for it
    assert at["recycling_contamination"] == {"sent": 0, "foreign": 0, "share": None}
    zero = _json(capsys, str(dataset), "--unsure-threshold", "0")["bin_level"]
    assert zero["at_threshold"]["confusion"] == zero["top1"]["confusion"]
    assert zero["at_threshold"]["coverage"] == 1.0


def test_the_configured_bins_are_the_policy(dataset, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  recycling: {labels: [cardboard, paper, metal, plastic, glass], servo_gpio: 12}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
        "model: {unsure_threshold: 0.5}\n"
    )
    bins = _json(capsys, str(dataset), "--config", str(config))["bin_level"]
    assert bins["policy"]["bins"] == {
        "recycling": ["cardboard", "paper", "metal", "plastic", "glass"],
        "landfill": ["trash"],
    }
    assert bins["policy"]["unsure_threshold"] == 0.5
    assert [sum(row) for row in bins["top1"]["confusion"]] == [20, 4]


def test_table_says_how_a_bin_counts_as_recycling_and_tta_is_chosen(dataset, capsys):
    assert main(["evaluate", str(dataset), "--model", str(MODEL), "--tta", "flip"]) == 0
    out = capsys.readouterr().out
    assert "tta flip" in out.splitlines()[0]
    assert "every bin except the fallback bin counts as a recycling bin (recycling, glass)" in out
    assert f"at the unsure threshold {card_threshold():.2f}: coverage" in out
    assert "contamination, all recycling" in out


def test_a_threshold_out_of_range_is_one_clear_error(dataset, capsys):
    assert main(["evaluate", str(dataset), "--model", str(MODEL), "--unsure-threshold", "2"]) != 0
    err = capsys.readouterr().err
    assert "--unsure-threshold 2.0: expected 0 to 1" in err and "Traceback" not in err


def test_class_bias_trades_other_labels_for_the_favoured_one(dataset, capsys):
    args = ["evaluate", str(dataset), "--model", str(MODEL), "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--class-bias", "trash=4"]) == 0
    favoured = json.loads(capsys.readouterr().out)
    assert plain["class_bias"] == {} and favoured["class_bias"] == {"trash": 4.0}
    trash = plain["labels"].index("trash")
    predicted_trash = [sum(row[trash] for row in r["confusion"]) for r in (plain, favoured)]
    assert predicted_trash[1] > predicted_trash[0]  # more items called trash
    assert favoured["per_class"]["trash"]["recall"] >= plain["per_class"]["trash"]["recall"]
    assert main([*args[:-1], "--class-bias", "trash=1"]) == 0
    assert "class bias trash +1" in capsys.readouterr().out.splitlines()[0]


def test_a_class_bias_for_no_label_or_out_of_range_is_one_clear_error(dataset, capsys):
    args = ["evaluate", str(dataset), "--model", str(MODEL)]
    assert main([*args, "--class-bias", "trahs=1"]) != 0
    err = capsys.readouterr().err
    assert "--class-bias trahs=1: 'trahs' is not one of the model's labels" in err
    assert "Traceback" not in err
    assert main([*args, "--class-bias", "trash=9"]) != 0
    assert "B from -4 to 4" in capsys.readouterr().err
