"""Cross-validation, whole-pool training and distillation (issue 15) on a tiny subset.

The loss and the teachers are checked against numbers computed by hand and against the
shipped int8 model; then one 2-fold cross-validation of a distilled recipe (the shipped
model as the teacher) and one whole-pool run of the same recipe go through the CLI end to
end at 96 px, 1 epoch (about a minute: three tiny trainings). None of it trains a real model.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest_models import assert_card_has_its_site_reference

from bin_daemon.cli import main

pytest.importorskip("tensorflow", reason="needs the [train] extra")

from bin_daemon.errors import BinDaemonError
from bin_daemon.training import crossval
from bin_daemon.training.distill import (
    Teacher,
    Teachers,
    distillation_loss,
    soften,
)

SAMPLES = Path(__file__).parent / "data" / "samples"
SHIPPED = Path(__file__).resolve().parents[1] / "models"
LABELS = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def _loss(alpha, temperature, y_true, logits, label_smoothing=0.0):
    fn = distillation_loss(2, alpha, temperature, label_smoothing)
    return np.asarray(fn(np.array([y_true], np.float32), np.array([logits], np.float32)))[0]


def test_distillation_loss_by_hand():
    # student logits [0, 0]: softmax at any T is [0.5, 0.5]; teacher soft label [0.75, 0.25]
    hard, soft = [1.0, 0.0], [0.75, 0.25]
    # alpha 1: T^2 * CE(q, [.5, .5]) = 4 * ln 2 (the hard label plays no part)
    assert _loss(1.0, 2.0, hard + soft, [0, 0]) == pytest.approx(4 * math.log(2), rel=1e-5)
    assert _loss(1.0, 2.0, [0.0, 1.0, *soft], [0, 0]) == pytest.approx(4 * math.log(2), rel=1e-5)
    # alpha 0: plain cross entropy with the hard label = ln 2
    assert _loss(0.0, 2.0, hard + soft, [0, 0]) == pytest.approx(math.log(2), rel=1e-5)
    assert _loss(0.5, 2.0, hard + soft, [0, 0]) == pytest.approx(2.5 * math.log(2), rel=1e-5)
    # student logits [ln 3, 0] at T 1 equal the teacher: CE = entropy of [.75, .25]
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert _loss(1.0, 1.0, hard + soft, [math.log(3), 0]) == pytest.approx(entropy, rel=1e-5)


def test_with_alpha_1_the_students_target_is_the_teachers_soft_label():
    import tensorflow as tf

    fn = distillation_loss(2, 1.0, 2.0)
    y = tf.constant([[1.0, 0.0, 0.75, 0.25]])
    logits = tf.Variable([[0.0, 0.0]])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(fn(y, logits))
    # d/ds of T^2 * CE(q, softmax(s / T)) = T * (softmax(s / T) - q) = 2 * ([.5, .5] - q)
    assert tape.gradient(value, logits).numpy() == pytest.approx(np.array([[-0.5, 0.5]]))
    # zero where softmax(s / T) = q: s = T * log q (+ any constant)
    logits.assign([[2 * math.log(0.75) + 1.0, 2 * math.log(0.25) + 1.0]])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(fn(y, logits))
    assert tape.gradient(value, logits).numpy() == pytest.approx(np.zeros((1, 2)), abs=1e-6)


def test_soften_and_bad_settings():
    p = np.array([[0.7, 0.2, 0.1]])
    assert soften(np.log(p), 1.0) == pytest.approx(p)
    softer = soften(np.log(p), 4.0)
    assert softer.sum() == pytest.approx(1.0) and softer.max() < 0.7 and softer.min() > 0.1
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(2, 1.5, 4.0)


def test_a_teacher_runs_at_its_own_size_and_gives_back_its_calibrated_probabilities():
    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.preprocess import load_image, to_model_input

    teacher = Teacher(SHIPPED, LABELS)
    classifier = Classifier.load(SHIPPED)
    assert teacher.size == classifier.input_size
    image = load_image(next((SAMPLES / "glass").iterdir()))
    view = to_model_input(image, 500)  # a view larger than the teacher's input
    logits = teacher.logits(view[None])
    probs = soften(logits, teacher.calibration_temperature)[0]  # back to the card's output
    prediction = classifier.classify(to_model_input(view, teacher.size))
    assert LABELS[int(probs.argmax())] == prediction.label
    assert probs.max() == pytest.approx(prediction.confidence, abs=2 / 256)
    ensemble = Teachers([teacher, Teacher(SHIPPED, LABELS)], 4.0)
    assert ensemble.soft_labels(view[None]) == pytest.approx(soften(logits, 4.0), abs=1e-6)
    assert ensemble.take_cost()[1] == 1
    with pytest.raises(BinDaemonError, match="labels"):
        Teacher(SHIPPED, list(reversed(LABELS)))
    with pytest.raises(BinDaemonError, match="not a model folder"):
        Teacher(SAMPLES, LABELS)


EPOCHS = ["--epochs", "1", "--head-epochs", "1"]
TINY = [
    "--input-size",
    "96",
    "--batch-size",
    "8",
    "--export-sizes",
    "--compare",
    "none",
    "--teacher",
    str(SHIPPED),
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    for folder in SAMPLES.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, data / folder.name)
    cv, pool = root / "cv", root / "pool"
    work = ["--work-dir", str(root / "work")]
    assert (
        main(
            ["train", "--data", str(data), "--out", str(cv), "--folds", "2", *TINY, *EPOCHS, *work]
        )
        == 0
    )
    # epochs: the cross-validation's (median of the epochs early stopping kept)
    args = ["train", "--data", str(data), "--out", str(pool), "--all-data", "--crossval", str(cv)]
    assert main([*args, *TINY, *work]) == 0
    return data, cv, pool


def test_crossval_holds_out_every_image_once_and_reports_mean_and_spread(sweep):
    _data, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    with (cv / "folds.csv").open() as handle:
        folds = {r["path"]: int(r["fold"]) for r in csv.DictReader(handle)}
    assert len(folds) == 24 and set(folds.values()) == {1, 2}
    for fold in (1, 2):
        with (cv / f"fold-{fold}" / "split.csv").open() as handle:
            split = list(csv.DictReader(handle))
        held_out = {r["path"] for r in split if r["subset"] == "test"}
        assert held_out == {p for p, f in folds.items() if f == fold}
        assert all(r["subset"] in {"train", "val"} for r in split if r["path"] not in held_out)
    assert len(report["per_fold"]) == 2 and sum(r["n"] for r in report["per_fold"]) == 24
    for key, _ in crossval.METRICS:
        s = report["metrics"][key]
        values = [v for v in s["folds"] if v is not None]
        if values:
            assert s["mean"] == pytest.approx(np.mean(values), abs=1e-4)
            assert s["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    assert report["epochs"]["finetune_best"] == [1, 1]
    assert report["whole_pool"]["finetune_epochs"] == 1
    assert report["teachers_saw_held_out"] == [str(SHIPPED)]  # a plain model folder
    markdown = (cv / "crossval.md").read_text()
    assert "| top-1 accuracy (int8) |" in markdown and " ± " in markdown
    assert "bin-camera: top-1 accuracy" in markdown and "--all-data" in markdown
    assert "| flip TTA: top-1 gain (points) |" in markdown


def test_crossval_scores_held_out_images_by_the_daemons_path(sweep):
    from bin_daemon.config import load_config
    from bin_daemon.loop.service import make_policy
    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.evaluate import evaluate_items

    data, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    fold_dir = cv / "fold-2"
    classifier = Classifier.load(fold_dir)
    with (fold_dir / "split.csv").open() as handle:
        items = [
            (r["label"], data / r["path"]) for r in csv.DictReader(handle) if r["subset"] == "test"
        ]
    run = evaluate_items(classifier, items, "x", policy=make_policy(load_config(None), classifier))
    assert report["per_fold"][1]["accuracy"] == pytest.approx(run.report.accuracy, abs=1e-4)
    assert run.bins is not None
    assert report["per_fold"][1]["bin_accuracy"] == pytest.approx(run.bins.top1.accuracy, abs=1e-4)
    # and again with flip test-time augmentation (model.tta: flip), the same fold model
    classifier.tta = "flip"
    flipped = evaluate_items(
        classifier, items, "x", policy=make_policy(load_config(None), classifier)
    )
    fold = report["per_fold"][1]
    assert fold["flip_accuracy"] == pytest.approx(flipped.report.accuracy, abs=1e-4)
    assert fold["flip_gain_points"] == pytest.approx(
        100 * (flipped.report.accuracy - run.report.accuracy), abs=0.01
    )
    assert flipped.confidence != run.confidence  # two views averaged: not the plain scores


def test_an_interrupted_crossval_continues_without_training_again(sweep, capsys):
    data, cv, _ = sweep
    before = (cv / "fold-1" / "waste_classifier.tflite").read_bytes()
    args = ["train", "--data", str(data), "--out", str(cv), "--folds", "2", *TINY, *EPOCHS]
    assert main([*args, "--work-dir", str(cv.parent / "work")]) == 0
    out = capsys.readouterr().out
    assert out.count("already trained") == 2 and "[train" not in out
    assert (cv / "fold-1" / "waste_classifier.tflite").read_bytes() == before


def test_distillation_ran_and_logged_its_cost(sweep):
    _, cv, _ = sweep
    results = json.loads((cv / "fold-1" / "training_results.json").read_text())
    assert results["training"]["teachers"] == [str(SHIPPED)]
    assert results["training"]["distill_alpha"] == 0.7
    distillation = results["distillation"]
    # views are drawn at the largest size involved: the teacher's (above the student's 96 px)
    teacher_size = json.loads((SHIPPED / "model_card.json").read_text())["input"]["size"]
    assert distillation["teacher_ms_per_batch"] > 0 and distillation["view_size"] == teacher_size
    assert distillation["teachers"][0]["input_size"] == teacher_size


def test_teachers_of_a_crossval_folder_teach_their_own_fold(sweep, tmp_path):
    _, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    chosen = crossval._teachers_for((cv, SHIPPED), 1, report["folds_hash"])
    assert chosen == (cv / "fold-2", SHIPPED)
    with pytest.raises(BinDaemonError, match="other folds"):
        crossval._teachers_for((cv,), 0, "0" * 64)
    with pytest.raises(BinDaemonError, match="DIR-pool"):  # whole pool: not a model folder
        Teacher(cv, LABELS)


def test_whole_pool_model_card_reports_the_cross_validated_figure(sweep):
    from bin_daemon.model.classifier import Classifier

    _, cv, pool = sweep
    report = json.loads((cv / "crossval.json").read_text())
    card = json.loads((pool / "model_card.json").read_text())
    assert card["metrics"]["split"] == "cross-validated"
    assert card["metrics"]["expected"]["accuracy"] == report["metrics"]["accuracy"]
    assert card["temperature"] == pytest.approx(report["whole_pool"]["temperature"], abs=1e-4)
    assert card["unsure_threshold"] == report["whole_pool"]["unsure_threshold"]
    assert card["dataset"]["counts"] == {"train": 24, "val": 0, "test": 0}
    assert card["training"]["finetune_epochs_run"] == 1 and card["training"]["whole_pool"]
    markdown = (pool / "MODEL_CARD.md").read_text()
    assert "cross-validated" in markdown and "out-of-fold" in markdown
    assert Classifier.load(pool).input_size == report["whole_pool"]["input_size"]


def test_the_whole_pool_card_carries_the_site_heads_centre_from_every_image(sweep):
    _, _, pool = sweep
    assert json.loads((pool / "model_card.json").read_text())["embedding_reference"]["n"] == 24
    assert_card_has_its_site_reference(pool)


def test_whole_pool_refuses_another_recipe_or_no_crossval(sweep, capsys):
    data, cv, pool = sweep
    args = ["train", "--data", str(data), "--out", str(pool.parent / "x"), "--all-data"]
    assert main([*args, "--crossval", str(cv), *TINY[2:], "--input-size", "80", *EPOCHS]) != 0
    assert "input_size 80" in capsys.readouterr().err
    assert main([*args, *TINY]) != 0
    assert "--all-data needs --crossval" in capsys.readouterr().err
    broken = pool.parent / "broken-cv"
    broken.mkdir()
    (broken / "crossval.json").write_text('{"folds": 5, "per_fo')  # cut short by a full disk
    assert main([*args, "--crossval", str(broken), *TINY]) != 0
    err = capsys.readouterr().err
    assert "no readable crossval.json" in err and "Traceback" not in err


def test_an_interrupted_crossval_leaves_its_finished_folds_marked_partial(
    sweep, tmp_path, monkeypatch, capsys
):
    """Killed during fold 2: fold 1's figures are on disk, and nothing takes them as final."""
    import bin_daemon.training.train as training

    data, cv, _ = sweep
    partial = tmp_path / "cv"
    shutil.copytree(cv, partial)
    (partial / "fold-2" / "training_results.json").unlink()  # fold 2 never finished
    (partial / "crossval.json").unlink()

    def interrupted(settings):
        assert settings.out == partial / "fold-2"
        raise KeyboardInterrupt  # what a stopped session does to the sweep

    monkeypatch.setattr(training, "train", interrupted)
    args = ["train", "--data", str(data), "--out", str(partial), "--folds", "2", *TINY, *EPOCHS]
    assert main([*args, "--work-dir", str(tmp_path / "work")]) == 130  # Ctrl-C's status
    report = json.loads((partial / "crossval.json").read_text())
    full = json.loads((cv / "crossval.json").read_text())
    assert report["folds_finished"] == 1 and not report["complete"]
    assert "whole_pool" not in report
    assert [r["fold"] for r in report["per_fold"]] == [1]
    assert report["metrics"]["accuracy"]["folds"] == full["metrics"]["accuracy"]["folds"][:1]
    markdown = (partial / "crossval.md").read_text()
    assert "**Partial:**" in markdown and "1 of 2 folds" in markdown
    assert "| fold 1 |" in markdown and "fold 2" not in markdown.split("## Targets")[0]
    assert "## For whole-pool training" not in markdown
    capsys.readouterr()
    pool = ["train", "--data", str(data), "--out", str(tmp_path / "pool"), "--all-data"]
    assert main([*pool, "--crossval", str(partial), *TINY]) != 0
    assert "unfinished (1 of 2 folds)" in capsys.readouterr().err
    # as a teacher it teaches the fold it finished, and refuses the other by name
    assert crossval._teachers_for((partial,), 0, report["folds_hash"]) == (partial / "fold-1",)
    with pytest.raises(BinDaemonError, match=r"its fold 2 is not finished \(finished: 1\)"):
        crossval._teachers_for((partial,), 1, report["folds_hash"])


def test_a_sweep_continues_on_another_machine_from_its_recorded_report(
    sweep, tmp_path, monkeypatch, capsys
):
    """Fold 1 was trained elsewhere: only its report and outputs are here. Fold 2 alone is
    trained, and the finished report is the one a single machine made."""
    import bin_daemon.training.train as training

    data, cv, _ = sweep
    moved = tmp_path / "cv"
    shutil.copytree(cv / "fold-1", moved / "fold-1")
    args = ["train", "--data", str(data), "--out", str(moved), "--folds", "2", *TINY, *EPOCHS]
    args += ["--work-dir", str(tmp_path / "work")]
    assert main([*args, "--score-only"]) == 0  # fold 1's partial report, as committed
    shutil.rmtree(moved / "fold-1")  # the new machine has the report and outputs only
    trained = []

    def train_fold_2_as_before(settings):
        trained.append(settings.out.name)
        shutil.copytree(cv / "fold-2", settings.out, dirs_exist_ok=True)
        return json.loads((settings.out / "training_results.json").read_text())

    monkeypatch.setattr(training, "train", train_fold_2_as_before)
    capsys.readouterr()
    assert main(args) == 0
    assert trained == ["fold-2"]
    assert "fold 1/2: no folder here; kept as recorded" in capsys.readouterr().out
    report, whole = (json.loads((f / "crossval.json").read_text()) for f in (moved, cv))
    assert report["complete"] and report["per_fold"] == whole["per_fold"]
    assert report["metrics"] == whole["metrics"]
    # calibrated on both folds' out-of-fold logits, fold 1's read from the recorded outputs
    for key in ("temperature", "unsure_threshold", "finetune_epochs", "input_size"):
        assert report["whole_pool"][key] == pytest.approx(whole["whole_pool"][key], abs=1e-3)
    saved, before = np.load(moved / "predictions.npz"), np.load(cv / "predictions.npz")
    assert sorted(saved.files) == sorted(before.files)
    for key in saved.files:
        assert np.array_equal(saved[key], before[key]), key
    # a report of another recipe is not taken for this one's folds, and is left as it is
    recorded = (moved / "crossval.json").read_text()
    assert main([*args, "--hard-views", "0.2", "--score-only"]) != 0
    captured = capsys.readouterr()
    assert "recorded for other recipe; its folds are not kept" in captured.out
    assert "no fold is trained yet" in captured.err
    assert (moved / "crossval.json").read_text() == recorded
    # a report cut short (a full disk) is not kept, nor in the way: the sweep goes on
    (moved / "crossval.json").write_text(recorded[:100])
    assert main([*args, "--score-only"]) == 0
    assert "crossval.json: unreadable" in capsys.readouterr().out
    rescored = json.loads((moved / "crossval.json").read_text())
    assert [row["fold"] for row in rescored["per_fold"]] == [2] and not rescored["complete"]
    # outputs cut short beside a readable report: one line naming the file, nothing rewritten
    predictions = (moved / "predictions.npz").read_bytes()
    (moved / "predictions.npz").write_bytes(predictions[:200])
    kept = (moved / "crossval.json").read_text()
    assert main([*args, "--score-only"]) != 0
    error = capsys.readouterr().err
    assert "predictions.npz: unreadable" in error and "Traceback" not in error
    assert (moved / "crossval.json").read_text() == kept


def test_a_sweep_resumed_fold_by_fold_adds_quantisation_aware_fine_tuning(sweep, tmp_path):
    data, cv, _ = sweep
    out = tmp_path / "cv-qat"
    args = ["train", "--data", str(data), "--out", str(out), "--folds", "2", *TINY]
    args += ["--resume", str(cv), "--qat-epochs", "1", "--work-dir", str(tmp_path / "work")]
    assert main(args) == 0
    report = json.loads((out / "crossval.json").read_text())
    assert report["resumed_from"] == str(cv) and report["recipe"]["qat_epochs"] == 1
    assert "bias_correction" not in report["recipe"]  # QAT exports without it
    assert "--qat-epochs 1" in report["whole_pool"]["command"]
    assert "resumed from the Keras weights" in (out / "crossval.md").read_text()
    for fold in (1, 2):
        source = json.loads((cv / f"fold-{fold}" / "training_results.json").read_text())
        resumed = json.loads((out / f"fold-{fold}" / "training_results.json").read_text())
        assert resumed["qat"]["epochs"] == 1 and resumed["distillation"]  # still taught
        assert (
            resumed["training"]["finetune_epochs_run"] == source["training"]["finetune_epochs_run"]
        )
        assert (out / f"fold-{fold}" / "split.csv").read_text() == (
            cv / f"fold-{fold}" / "split.csv"
        ).read_text()


def test_a_finished_fold_counts_only_for_the_recipe_it_was_trained_with(sweep):
    import dataclasses

    from bin_daemon.training import crossval
    from bin_daemon.training.split import read_split
    from bin_daemon.training.train import TrainSettings

    data, cv, _ = sweep
    fold = cv / "fold-1"
    split = read_split(fold / "split.csv")
    same = TrainSettings(
        data=data, out=cv, input_size=96, batch_size=8, export_sizes=(), teachers=(SHIPPED,)
    )
    assert crossval._finished(fold, split, same) is not None
    for change in ({"bias_correction": False}, {"qat_epochs": 2}, {"hard_view_probability": 0.2}):
        assert crossval._finished(fold, split, dataclasses.replace(same, **change)) is None


def test_crossval_saves_every_held_out_images_outputs(sweep):
    _, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    with (cv / "folds.csv").open() as handle:
        folds = {r["path"]: int(r["fold"]) for r in csv.DictReader(handle)}
    saved = np.load(cv / report["predictions"])
    assert list(saved["labels"]) == LABELS
    assert {str(p): int(f) for p, f in zip(saved["paths"], saved["fold"], strict=True)} == folds
    for row in report["per_fold"]:
        mine = saved["fold"] == row["fold"]
        truth = saved["truth"][mine]
        assert [LABELS[t] for t in truth] == [
            Path(str(p)).parent.name for p in saved["paths"][mine]
        ]
        for key, figure in (
            ("int8", "accuracy"),
            ("int8_camera", "camera_accuracy"),
            ("int8_flip", "flip_accuracy"),
            ("int8_camera_flip", "flip_camera_accuracy"),
            ("float_logits", "float_accuracy"),
        ):
            hits = np.mean(saved[key][mine].argmax(1) == truth)
            assert hits == pytest.approx(row[figure], abs=1e-4), key
        assert saved["int8"][mine].sum(1) == pytest.approx(1.0, abs=0.02)  # probabilities


def test_bin_camera_views_are_drawn_at_one_size_for_every_model(sweep):
    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.evaluate import evaluate_items
    from bin_daemon.model.preprocess import load_image
    from bin_daemon.training.camera_effects import TEST_VIEWS_SEED_OFFSET
    from bin_daemon.training.card_metrics import _camera_view

    data, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    views = report["camera_views"]
    assert views == {
        "drawn_at": crossval.CAMERA_VIEWS_AT,
        "seed": report["fold_seed"] + TEST_VIEWS_SEED_OFFSET,
        "then": "resized to each fold model's input size",
    }
    classifier = Classifier.load(cv / "fold-1")
    assert classifier.input_size == 96  # the views are larger than this model's input
    saved = np.load(cv / "predictions.npz")
    mine = saved["fold"] == 1
    items = [
        (LABELS[t], data / str(p))
        for t, p in zip(saved["truth"][mine], saved["paths"][mine], strict=True)
    ]
    # drawn at 288 px (resized to the model's 96 px by its own preprocessing), not at 96 px
    drawn = _camera_view(views["drawn_at"], views["seed"])
    assert drawn(load_image(items[0][1])).shape == (288, 288, 3)
    run = evaluate_items(classifier, items, "x", view=_camera_view(288, views["seed"]))
    assert np.stack(run.scores) == pytest.approx(saved["int8_camera"][mine], abs=1e-6)
    other_size = evaluate_items(classifier, items, "x", view=_camera_view(96, views["seed"]))
    assert not np.allclose(np.stack(other_size.scores), saved["int8_camera"][mine])


def test_score_only_scores_the_trained_folds_and_trains_none(sweep, tmp_path, capsys):
    data, cv, _ = sweep
    partial = tmp_path / "partial"
    shutil.copytree(cv / "fold-1", partial / "fold-1")  # fold 2 never trained
    args = ["train", "--data", str(data), "--out", str(partial), "--folds", "2", *TINY, *EPOCHS]
    assert main([*args, "--work-dir", str(tmp_path / "work"), "--score-only"]) == 0
    out = capsys.readouterr().out
    assert "fold 2/2: not trained yet" in out and "[train" not in out
    assert not (partial / "fold-2").exists()
    report = json.loads((partial / "crossval.json").read_text())
    whole = json.loads((cv / "crossval.json").read_text())
    assert report["folds_finished"] == 1 and not report["complete"]
    assert report["per_fold"] == whole["per_fold"][:1]  # scored again: the same figures
    assert set(np.load(partial / "predictions.npz")["fold"].tolist()) == {1}
    markdown = (partial / "crossval.md").read_text()
    assert "Partial" in markdown and "Bin-camera views drawn at 288 px" in markdown
    assert "--score-only" not in report["command"]  # the sweep's command, to continue it
    assert main(["train", "--data", str(data), "--out", str(partial), "--score-only"]) != 0
    assert "--score-only is for --folds" in capsys.readouterr().err


def test_an_ensemble_of_a_sweep_with_itself_is_that_sweep(sweep, tmp_path, capsys):
    from bin_daemon.training import ensemble

    _, cv, _ = sweep
    report = json.loads((cv / "crossval.json").read_text())
    assert ensemble.main([str(cv), str(cv), "--out", str(tmp_path / "same.md")]) == 0
    result = json.loads((tmp_path / "same.json").read_text())
    assert result["folds"] == [1, 2] and result["images"] == 24
    for key in ("accuracy", "camera_accuracy", "macro_f1", "min_recall", "bin_accuracy"):
        folds = [row[key] for row in report["per_fold"]]
        assert result["summary"]["ensemble"][key]["folds"] == pytest.approx(folds, abs=1e-4)
        assert result["ensemble_gain_points_over_members_mean"][key]["mean"] == 0.0
        for name in (f"{cv} (2)", "ensemble"):
            assert result["points_against_first_sweep"][name][key]["folds"] == [0.0, 0.0]
    # a sweep shares every one of its errors with itself: the oracle is its own accuracy
    shared = result["shared_errors"]["int8"]
    wrong = round(24 * (1 - statistics.fmean(row["accuracy"] for row in report["per_fold"])))
    assert list(shared["wrong_per_member"].values()) == [wrong, wrong]
    assert shared["wrong_for_every_member"] == shared["wrong_for_some_member"] == wrong
    assert len(shared["images_wrong_for_every_member"]) == wrong
    out = capsys.readouterr().out
    assert "| top-1 accuracy (int8) |" in out and "## Where the members' errors overlap" in out
    assert f"## Paired against `{cv}`, fold by fold" in out


def _fake_sweep(folder: Path, int8: list, folds_hash: str = "f" * 64) -> Path:
    folder.mkdir()
    report = {
        "folds_hash": folds_hash,
        "camera_views": {"drawn_at": 288, "seed": 1},
        "predictions": "predictions.npz",
    }
    (folder / "crossval.json").write_text(json.dumps(report))
    probs = np.array(int8, np.float32)
    np.savez(
        folder / "predictions.npz",
        labels=np.array(LABELS),
        fold=np.array([1, 1, 1, 2, 2, 2]),
        paths=np.array([f"{LABELS[i % 3]}/{i}.jpg" for i in range(6)]),
        truth=np.array([0, 1, 2, 0, 1, 2]),
        int8=probs,
        int8_camera=probs,
    )
    return folder


def test_an_ensemble_averages_probabilities_by_image(tmp_path, capsys):
    from bin_daemon.training import ensemble

    sure, unsure = 0.9, 0.4

    def row(right: int, wrong: int, p: float) -> list:
        out = [0.0] * 6
        out[right], out[wrong] = p, 1 - p
        return out

    # a is sure and right on 0, 2, 3, 5 and unsure and wrong on 1, 4; b the other way round
    a = [row(0, 3, sure), row(3, 1, 1 - unsure), row(2, 3, sure)] * 2
    b = [row(3, 0, 1 - unsure), row(1, 3, sure), row(3, 2, 1 - unsure)] * 2
    one, two = _fake_sweep(tmp_path / "a", a), _fake_sweep(tmp_path / "b", b)
    result = ensemble.compare([ensemble.load_sweep(one), ensemble.load_sweep(two)])
    assert result["summary"][str(one)]["accuracy"]["mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["summary"][str(two)]["accuracy"]["mean"] == pytest.approx(1 / 3, abs=1e-4)
    # averaged, the true label gets 0.65 against 0.35 on every image: all right
    assert result["summary"]["ensemble"]["accuracy"]["folds"] == [1.0, 1.0]
    assert result["ensemble_gain_points_over_members_mean"]["accuracy"]["mean"] == pytest.approx(
        50.0
    )
    # paired per fold against a: b loses a third of the images on each fold, the average wins one
    against = result["points_against_first_sweep"]
    assert against[str(two)]["accuracy"]["folds"] == pytest.approx([-100 / 3] * 2, abs=0.01)
    assert against["ensemble"]["accuracy"]["folds"] == pytest.approx([100 / 3] * 2, abs=0.01)
    assert against["ensemble"]["accuracy"]["std"] == 0.0
    # their errors never coincide: some member is right on every image
    shared = result["shared_errors"]["int8"]
    assert shared["wrong_per_member"] == {str(one): 2, str(two): 4}
    assert shared["wrong_for_every_member"] == 0 and shared["wrong_for_some_member"] == 6
    assert shared["right_for_some_member"] == 1.0
    # against a sweep wrong everywhere, the shared errors are a's: images 1 and 4, truth 1
    never = _fake_sweep(tmp_path / "never", [row(3, 0, sure)] * 6)
    result = ensemble.compare([ensemble.load_sweep(one), ensemble.load_sweep(never)])
    listed = result["shared_errors"]["int8"]["images_wrong_for_every_member"]
    assert [(item["path"], item["truth"]) for item in listed] == [
        (f"{LABELS[1]}/1.jpg", LABELS[1]),
        (f"{LABELS[1]}/4.jpg", LABELS[1]),
    ]
    assert [item["predicted"] for item in listed] == [[LABELS[3], LABELS[3]]] * 2
    # sweeps on other folds are refused, naming the sweep and what differs
    other = _fake_sweep(tmp_path / "c", a, folds_hash="0" * 64)
    assert ensemble.main([str(one), str(other)]) == 2
    assert f"{other}: other folds hash" in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    (old / "crossval.json").write_text(json.dumps({"folds_hash": "f" * 64}))
    assert ensemble.main([str(one), str(old)]) == 2
    assert "--score-only" in capsys.readouterr().err
