"""The whole training pipeline on a tiny dataset: split, train, int8 export, card, evaluate.

This is the CI proof that `bin-daemon train` works end to end (about a minute); it does not
train the shipped model, whose numbers are in models/MODEL_CARD.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_models import assert_card_has_its_site_reference

from bin_daemon.cli import main

pytest.importorskip("tensorflow", reason="needs the [train] extra")

SAMPLES = Path(__file__).parent / "data" / "samples"
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    data = tmp_path_factory.mktemp("data")
    for folder in SAMPLES.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, data / folder.name)
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--input-size",
        "96",
        "--epochs",
        "1",
        "--head-epochs",
        "1",
        "--batch-size",
        "8",
        "--export-sizes",
        "112",
        "--work-dir",
        str(out.parent / "work"),
    ]
    if (SHARED_WEIGHTS / "coral").is_dir():
        args += ["--weights-dir", str(SHARED_WEIGHTS)]
    else:
        args += ["--compare", "none"]
    assert main(args) == 0
    return out


def test_writes_a_full_integer_model_with_its_card(trained):
    from bin_daemon.model.classifier import load_interpreter_class

    model = trained / "waste_classifier.tflite"
    card = json.loads((trained / "model_card.json").read_text())
    assert card["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert card["labels"] == (trained / "labels.txt").read_text().split()
    assert card["input"]["size"] in (96, 112) and 0 < card["unsure_threshold"] < 1
    assert set(
        json.loads((trained / "model_card.json").read_text())["training"]["settings"][
            "export_sizes"
        ]
    ) == {112}
    assert card["temperature"] > 0
    interpreter_class, _ = load_interpreter_class()
    interpreter = interpreter_class(model_path=str(model))
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    assert list(interpreter.get_output_details()[0]["shape"]) == [1, 6]
    # the second output: the pooled embedding the site store learns from (card: embedding)
    assert list(interpreter.get_output_details()[1]["shape"]) == [1, 1280]
    assert card["embedding"]["size"] == 1280 and card["embedding"]["dtype"] == "int8"
    float_tensors = [
        t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32
    ]
    assert float_tensors == [], f"not full-integer: float tensors {float_tensors[:5]}"
    for name in ("MODEL_CARD.md", "confusion_matrix.png", "coverage_curve.png", "split.csv"):
        assert (trained / name).stat().st_size > 0
    assert set(card["targets"]) >= {"accuracy", "macro_f1", "min_recall", "bin_camera_accuracy"}
    assert card["dataset"]["hash"] and card["dataset"]["split_seed"] == 20261124
    if (SHARED_WEIGHTS / "coral").is_dir():
        assert len(card["backbones"]) == 2


def test_the_card_carries_the_site_heads_centre_from_the_training_images(trained):
    assert_card_has_its_site_reference(trained)


def test_split_file_names_every_image_with_its_hash(trained):
    lines = (trained / "split.csv").read_text().splitlines()
    assert lines[0] == "path,label,sha256,subset" and len(lines) == 25
    path, _, sha, _ = lines[1].split(",")
    assert sha == hashlib.sha256((SAMPLES / path).read_bytes()).hexdigest()


def test_evaluate_scores_the_trained_model(trained, capsys):
    assert main(["evaluate", str(SAMPLES), "--model", str(trained), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 24 and result["labels"][:6] == sorted(
        p.name for p in SAMPLES.iterdir() if p.is_dir()
    )
    assert np.array(result["confusion"]).sum() == 24
    assert 0.0 <= result["accuracy"] <= 1.0


def test_compare_rescores_runs_of_the_same_split_and_refuses_another(trained, tmp_path, capsys):
    from bin_daemon.model.evaluate import evaluate_items
    from bin_daemon.training import compare
    from bin_daemon.training.split import read_split

    into, other = tmp_path / "into", tmp_path / "other"
    shutil.copytree(trained, into)
    shutil.copytree(trained, other)
    card = json.loads((other / "model_card.json").read_text())
    card["training"]["settings"]["input_size"] = 80  # a different run's label
    (other / "model_card.json").write_text(json.dumps(card))
    assert compare.main(["--data", str(SAMPLES), "--into", str(into), str(other)]) == 0

    rows = json.loads((into / "model_card.json").read_text())["backbones"]
    assert [r["backbone"].split(",")[1] for r in rows[:2]] == [
        " trained at 96 px",
        " trained at 80 px",
    ]
    assert rows[0]["backbone"].endswith("(shipped)") and len(rows) == len(card["backbones"]) + 1
    from bin_daemon.model.classifier import Classifier

    split = read_split(trained / "split.csv")
    val = [(s.label, SAMPLES / s.path) for s in split if s.subset == "val"]
    expected = evaluate_items(Classifier.load(trained), val, "val").report.accuracy
    assert rows[0]["val_int8_accuracy"] == rows[1]["val_int8_accuracy"] == expected
    # bin-camera views drawn as training drew them: the daemon's path gives training's number
    trained_card = json.loads((trained / "model_card.json").read_text())
    assert rows[0]["val_bin_camera_accuracy"] == pytest.approx(
        trained_card["metrics"]["val_bin_camera_accuracy"], abs=1e-9
    )
    assert "| int8 val accuracy |" in (into / "MODEL_CARD.md").read_text()
    # bin accuracy under the default bins: a right label is always the right bin
    assert rows[0]["val_bin_accuracy"] >= rows[0]["val_int8_accuracy"]
    assert "| bin accuracy val / test |" in (into / "MODEL_CARD.md").read_text()
    assert "best on validation" in capsys.readouterr().out

    lines = (other / "split.csv").read_text().splitlines()
    path, label, sha, subset = lines[1].split(",")
    lines[1] = ",".join([path, label, sha, "train" if subset != "train" else "test"])
    (other / "split.csv").write_text("\n".join(lines) + "\n")
    assert compare.main(["--data", str(SAMPLES), "--into", str(into), str(other)]) == 1
    assert "another split" in capsys.readouterr().err


def test_resume_adds_quantisation_aware_fine_tuning_to_a_trained_run(trained, tmp_path, capsys):
    before = json.loads((trained / "training_results.json").read_text())
    args = ["train", "--data", before["dataset"]["root"], "--input-size", "96"]
    args += ["--batch-size", "8", "--export-sizes", "112", "--compare", "none"]
    args += ["--work-dir", str(tmp_path / "work"), "--resume", str(trained), "--qat-epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "qat")]) == 0
    after = json.loads((tmp_path / "qat" / "training_results.json").read_text())
    assert after["qat"]["activations"] == 59 and after["qat"]["epochs"] == 1
    # bias correction is the default export, and QAT's exports go without it
    assert before["bias_correction"]["layers"] == 49 and after["bias_correction"] is None
    assert 0 <= after["qat"]["val_fake_quant_after"] <= 1
    # the head and fine-tuning phases were not run again: their record is the resumed run's
    for key in ("finetune_epochs_run", "finetune_best_epoch", "head_epochs_run"):
        assert after["training"][key] == before["training"][key]
    assert (tmp_path / "qat" / "waste_classifier.tflite").read_bytes() != (
        trained / "waste_classifier.tflite"
    ).read_bytes()
    assert main([*args, "--seed", "7", "--out", str(tmp_path / "other")]) != 0
    assert "trained on another split" in capsys.readouterr().err
