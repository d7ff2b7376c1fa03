"""Stratified k-fold cross-validation of one training recipe: ``bin-daemon train --folds K``.

For fold i of K (seeded, stratified: :mod:`bin_daemon.training.folds`) one model is trained
with the recipe on the other K-1 folds (their ``val`` part chooses the early-stopping epoch,
the inference size, the temperature and the threshold, as in a single run) and written as an
ordinary model folder ``OUT/fold-i/`` with its card. Its held-out fold is then scored by the
daemon's own path (decode, preprocessing, the int8 classifier, the default config's policy),
clean and under bin-camera conditions (the views ``compare`` and ``card_metrics`` draw):
top-1 accuracy, macro-F1, lowest class recall, bin accuracy, recycling contamination, and
coverage and accuracy at the fold's unsure threshold; then again with flip test-time
augmentation (``model.tta: flip``), paired. ``OUT/crossval.json`` and
``OUT/crossval.md`` get the figures per fold, their mean and spread (sample standard
deviation, min, max), the epochs early stopping kept in each fold, and what whole-pool
training needs: the epoch counts (median over folds), the inference size (the folds' most
frequent choice) and the temperature and unsure threshold fitted on the pooled out-of-fold
logits (every image is predicted once, by the fold model that never saw it).

A fold whose folder already holds a finished run of the same split is not trained again, so
an interrupted sweep continues where it stopped. A fold whose folder is gone but whose figures
and per-image outputs ``OUT/crossval.json`` and ``OUT/predictions.npz`` still hold (a partial
sweep's committed report, copied into ``OUT`` on another machine) is kept as recorded when
the report is of the same folds and recipe, so a sweep also continues across machines.

Teachers for distillation: a teacher given as a cross-validation folder (one with
``crossval.json`` made with the same folds) teaches fold i with its own fold-i model, which
never saw fold i's held-out images (as soon as its fold i is finished: a partial teacher
sweep teaches the folds it has); a plain model folder teaches every fold, and the report
says that the teacher may have seen the held-out images (an optimistic figure).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.errors import BinDaemonError
from bin_daemon.loop.service import make_policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.evaluate import evaluate_items
from bin_daemon.training import calibration
from bin_daemon.training.camera_effects import TEST_VIEWS_SEED_OFFSET
from bin_daemon.training.card_metrics import _camera_view, summary
from bin_daemon.training.folds import (
    HELD_OUT_FILE,
    fold_split,
    folds_hash,
    stratified_kfold,
    write_folds,
)
from bin_daemon.training.split import limit_per_class, read_split, scan_dataset

REPORT = "crossval.json"
MARKDOWN = "crossval.md"
PREDICTIONS = "predictions.npz"  # every held-out image's outputs, for offline comparisons
TTA_MODES = ("none", "flip")
# Bin-camera test views are drawn at this size (the shipped recipe's input, where the
# effects' pixel sizes were set: blur kernel, noise per pixel) from the fold seed, then
# resized to each model's input: every model, whatever its size or training seed, is scored
# on the very same corrupted pixels. (Drawn at each model's own size, a 416 px model saw a
# third milder blur and noise than a 288 px one: docs/TRAINING.md.)
CAMERA_VIEWS_AT = 288
# (key in a fold's figures, label in the table); every one gets mean and spread
METRICS = (
    ("accuracy", "top-1 accuracy (int8)"),
    ("float_accuracy", "top-1 accuracy (float)"),
    ("macro_f1", "macro-F1"),
    ("min_recall", "lowest class recall"),
    ("bin_accuracy", "bin accuracy (by top-1 label)"),
    ("recycling_contamination", "recycling contamination (by top-1 label)"),
    ("coverage", "sorted at the unsure threshold (coverage)"),
    ("accuracy_covered", "top-1 accuracy on sorted items"),
    ("bin_accuracy_at_threshold", "bin accuracy, unsure -> fallback"),
    ("camera_accuracy", "bin-camera: top-1 accuracy"),
    ("camera_macro_f1", "bin-camera: macro-F1"),
    ("camera_bin_accuracy", "bin-camera: bin accuracy"),
    ("camera_coverage", "bin-camera: sorted at the threshold"),
    ("int8_minus_float_points", "int8 minus float (points)"),
    # the same fold models with flip test-time augmentation (model.tta: flip)
    ("flip_accuracy", "flip TTA: top-1 accuracy"),
    ("flip_gain_points", "flip TTA: top-1 gain (points)"),
    ("flip_macro_f1", "flip TTA: macro-F1"),
    ("flip_min_recall", "flip TTA: lowest class recall"),
    ("flip_bin_accuracy", "flip TTA: bin accuracy"),
    ("flip_coverage", "flip TTA: sorted at the threshold"),
    ("flip_camera_accuracy", "flip TTA, bin-camera: top-1 accuracy"),
    ("flip_camera_gain_points", "flip TTA, bin-camera: top-1 gain (points)"),
)
FLIP_KEYS = ("accuracy", "macro_f1", "min_recall", "bin_accuracy", "coverage")
TARGETS = {  # issue 15's targets, on the project's own cross-validation
    "accuracy": 0.95,
    "camera_accuracy": 0.90,
    "macro_f1": 0.93,
    "min_recall": 0.85,
}


def load_report(folder: Path) -> dict:
    """``folder/crossval.json``; one clear error if it is missing or unreadable."""
    try:
        return json.loads((folder / REPORT).read_text())
    except (OSError, ValueError) as error:
        raise BinDaemonError(
            f"{folder}: no readable {REPORT} ({error}); make it with bin-daemon train --folds K"
        ) from error


def fold_figures(
    fold_dir: Path, data: Path, view_seed: int, results: dict, threads: int
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score a fold's held-out images (its split's ``test``) through the daemon's path,
    without and with flip test-time augmentation (``model.tta: flip``).

    Returns the fold's figures and its per-image predictions (:data:`PREDICTIONS`)."""
    classifier = Classifier.load(fold_dir, num_threads=threads)
    policy = make_policy(load_config(None), classifier)  # default bins, the fold's threshold
    tests = [s for s in read_split(fold_dir / "split.csv") if s.subset == "test"]
    held_out = [(s.label, data / s.path) for s in tests]
    runs = {}

    def score(tta: str) -> tuple[dict, dict, float]:
        classifier.tta = tta
        where = f"{fold_dir} (held out{'' if tta == 'none' else ', tta ' + tta}"
        clean_run = evaluate_items(classifier, held_out, where + ")", policy=policy)
        # the same views for every model, whatever its input size (see CAMERA_VIEWS_AT)
        camera_run = evaluate_items(
            classifier,
            held_out,
            where + ", bin-camera)",
            policy=policy,
            view=_camera_view(CAMERA_VIEWS_AT, view_seed),
        )
        for run_ in (clean_run, camera_run):
            if run_.skipped:
                raise BinDaemonError(f"{where}): images could not be decoded: {run_.skipped}")
        runs[tta] = (clean_run, camera_run)
        assert clean_run.bins is not None
        return (
            summary(clean_run),
            summary(camera_run),
            clean_run.bins.top1.recycling_contamination.share,
        )

    clean, camera, contamination = score("none")
    flip, flip_camera, _ = score("flip")
    training = results["training"]
    float_accuracy = results["test_float"]["accuracy"]
    figures = {
        "n": clean["n"],
        **{k: clean[k] for k in ("accuracy", "macro_f1", "min_recall", "bin_accuracy")},
        "recycling_contamination": contamination,
        "coverage": clean["coverage"],
        "accuracy_covered": clean["accuracy_covered"],
        "bin_accuracy_at_threshold": clean["bin_accuracy_at_threshold"],
        "camera_accuracy": camera["accuracy"],
        "camera_macro_f1": camera["macro_f1"],
        "camera_bin_accuracy": camera["bin_accuracy"],
        "camera_coverage": camera["coverage"],
        "float_accuracy": round(float_accuracy, 4),
        "int8_minus_float_points": round(100 * (clean["accuracy"] - float_accuracy), 2),
        **{f"flip_{k}": flip[k] for k in FLIP_KEYS},
        **{f"flip_camera_{k}": flip_camera[k] for k in FLIP_KEYS},
        "flip_gain_points": round(100 * (flip["accuracy"] - clean["accuracy"]), 2),
        "flip_camera_gain_points": round(100 * (flip_camera["accuracy"] - camera["accuracy"]), 2),
        "unsure_threshold": results["unsure_threshold"],
        "temperature": results["temperature"],
        "input_size": results["input_size"],
        "finetune_best_epoch": training["finetune_best_epoch"],
        "finetune_epochs_run": training["finetune_epochs_run"],
        "head_best_epoch": training["head_best_epoch"],
        "minutes": round(training["total_seconds"] / 60, 1),
    }
    held = np.load(fold_dir / HELD_OUT_FILE)
    row_of = {str(path): i for i, path in enumerate(held["paths"])}
    paths = [s.path for s in tests]
    if sorted(row_of) != sorted(paths):
        raise BinDaemonError(f"{fold_dir / HELD_OUT_FILE}: not the images of the fold's split")
    order = [row_of[p] for p in paths]
    labels = list(classifier.labels)
    predictions = {
        "paths": np.array(paths),
        "truth": np.array([labels.index(label) for label, _ in held_out], np.int16),
        "float_logits": np.asarray(held["logits"], np.float32)[order],
        **{
            f"{name}{'' if tta == 'none' else '_' + tta}": np.stack(
                [np.asarray(s, np.float32) for s in runs[tta][i].scores]
            )
            for tta in TTA_MODES
            for i, name in enumerate(("int8", "int8_camera"))
        },
    }
    return figures, predictions


def write_predictions(path: Path, folds: list[tuple[int, dict]], labels: list[str]) -> None:
    """The finished folds' per-image predictions, concatenated (``fold`` says whose)."""
    keys = folds[0][1].keys()
    arrays = {key: np.concatenate([p[key] for _, p in folds]) for key in keys}
    arrays["fold"] = np.concatenate([np.full(len(p["truth"]), n, np.int16) for n, p in folds])
    np.savez_compressed(path, labels=np.array(labels), **arrays)


def spread(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min and max of the folds' values (None skipped)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"mean": None, "std": None, "min": None, "max": None, "folds": values}
    return {
        "mean": round(statistics.fmean(known), 4),
        "std": round(statistics.stdev(known), 4) if len(known) > 1 else 0.0,
        "min": round(min(known), 4),
        "max": round(max(known), 4),
        "folds": values,
    }


def _teachers_for(teachers: tuple[Path, ...], fold: int, fold_hash: str) -> tuple[Path, ...]:
    chosen = []
    for teacher in teachers:
        if (teacher / REPORT).is_file():
            theirs = load_report(teacher)
            if theirs["folds_hash"] != fold_hash:
                raise BinDaemonError(
                    f"teacher {teacher}: cross-validated on other folds than this run "
                    "(same data, --folds and --fold-seed needed)"
                )
            # a teacher sweep can teach each fold it has finished, so that teacher and student
            # sweeps can advance fold by fold (across sessions, say)
            finished = sorted(row["fold"] for row in theirs["per_fold"])
            if fold + 1 not in finished:
                raise BinDaemonError(
                    f"teacher {teacher}: its fold {fold + 1} is not finished (finished: "
                    f"{', '.join(map(str, finished))}); run its own "
                    "`bin-daemon train --folds` command again to continue it"
                )
            chosen.append(teacher / f"fold-{fold + 1}")
        else:
            chosen.append(teacher)
    return tuple(chosen)


def _finished(fold_dir: Path, split, settings) -> dict | None:
    """The results of a finished run of ``split`` with ``settings``' recipe in ``fold_dir``."""
    results = fold_dir / "training_results.json"
    if not (results.is_file() and (fold_dir / "model_card.json").is_file()):
        return None
    if read_split(fold_dir / "split.csv") != split:
        return None
    finished = json.loads(results.read_text())
    if _recipe(_recorded_settings(finished["training"])) != _recipe(settings):
        return None  # another recipe (or one from before a recipe setting existed)
    return finished


def _recorded_settings(training: dict) -> SimpleNamespace:
    """A run's recipe settings as its training record holds them (a missing one is None)."""
    recorded = {key: training.get(key) for key in RECIPE_KEYS}
    recorded["export_sizes"] = tuple(recorded["export_sizes"] or ())
    recorded["bias_correction"] = bool(recorded["bias_correction"])  # before it existed: none
    return SimpleNamespace(**recorded, teachers=tuple(training.get("teachers") or ()))


def run(
    base,
    k: int,
    fold_seed: int,
    train: Callable[..., dict],
    write_card: Callable[[dict, Path, list], dict],
    log: Callable[[str], None] = print,
    score_only: bool = False,
) -> dict:
    """Train and score every fold of ``base`` (a TrainSettings), write the report; return it.

    ``score_only``: score the folds already trained again (with today's scoring) and train
    none; the report then holds those folds and the recorded ones only (partial if any is
    missing)."""
    started = time.monotonic()
    out: Path = base.out
    out.mkdir(parents=True, exist_ok=True)
    samples = limit_per_class(scan_dataset(base.data), base.per_class_limit)
    folds = stratified_kfold(samples, k, fold_seed)
    fold_hash = folds_hash(samples, folds)
    write_folds(samples, folds, out / "folds.csv")
    recorded = _recorded_folds(out, k, fold_seed, fold_hash, _recipe(base), log)
    rows, oof_logits, oof_targets, predictions = [], [], [], []
    labels: list[str] = []

    def write_report() -> dict:
        """The report, its Markdown and the predictions of the folds finished so far."""
        report = _report(base, k, fold_seed, fold_hash, len(samples), rows, started)
        write_predictions(out / PREDICTIONS, predictions, labels)
        if len(rows) == k:
            report["whole_pool"] = _whole_pool(
                base, rows, np.concatenate(oof_logits), np.concatenate(oof_targets), k
            )
            report["whole_pool"]["command"] = whole_pool_command(base, out, report)
        (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        (out / MARKDOWN).write_text(render(report))
        return report

    for fold in range(k):
        fold_dir = out / f"fold-{fold + 1}"
        split = fold_split(samples, folds, fold, fold_seed)
        results = _finished(fold_dir, split, base)
        if results is None and fold + 1 in recorded:
            row, held_predictions, labels = recorded[fold + 1]
            log(f"fold {fold + 1}/{k}: no folder here; kept as recorded in {out / REPORT}")
            rows.append(row)
            predictions.append((fold + 1, held_predictions))
            oof_logits.append(held_predictions["float_logits"])
            oof_targets.append(held_predictions["truth"])
            continue
        if results is None and score_only:
            log(f"fold {fold + 1}/{k}: not trained yet; --score-only trains nothing")
            continue
        resume_dir = None if base.resume is None else base.resume / f"fold-{fold + 1}"
        if results is None and resume_dir is not None and not resume_dir.is_dir():
            # a fit-only sweep fitted in parts (training.fit_only): the rest comes later
            log(f"fold {fold + 1}/{k}: not in {base.resume}; left unfinished")
            continue
        if results is None:
            log(f"fold {fold + 1}/{k}: training")
            settings = dataclasses.replace(
                base,
                out=fold_dir,
                split=split,
                work_dir=base.work_dir / f"fold-{fold + 1}",
                teachers=_teachers_for(base.teachers, fold, fold_hash),
                resume=resume_dir,
                per_class_limit=None,
            )
            results = train(settings)
            write_card(results, fold_dir, [])
        else:
            log(f"fold {fold + 1}/{k}: already trained in {fold_dir}, scored again")
        figures, held_predictions = fold_figures(
            fold_dir, base.data, fold_seed + TEST_VIEWS_SEED_OFFSET, results, base.threads
        )
        figures = {"fold": fold + 1, **figures}
        predictions.append((fold + 1, held_predictions))
        labels = list(results["labels"])
        log(
            f"fold {fold + 1}/{k}: held-out accuracy {figures['accuracy']:.3f}, bin-camera "
            f"{figures['camera_accuracy']:.3f}, bin accuracy {figures['bin_accuracy']:.3f}; "
            f"best fine-tuning epoch {figures['finetune_best_epoch']}"
        )
        rows.append(figures)
        held = np.load(fold_dir / HELD_OUT_FILE)
        oof_logits.append(held["logits"])
        oof_targets.append(held["targets"])
        # written after every fold, so that an interrupted sweep leaves its finished folds'
        # figures (marked partial) for the maintainer to read while it is continued
        write_report()
    if not rows:
        raise BinDaemonError(
            f"{out}: no fold is trained yet; nothing to score (--score-only, or --resume "
            "from a folder without any fold)"
        )
    report = write_report()  # once more: a sweep of recorded folds only writes here
    log(f"wrote {out / REPORT}, {out / MARKDOWN} and {out / PREDICTIONS}")
    return report


def _recorded_folds(
    out: Path, k: int, fold_seed: int, fold_hash: str, recipe: dict, log: Callable[[str], None]
) -> dict[int, tuple[dict, dict[str, np.ndarray], list[str]]]:
    """The folds that ``out``'s report and predictions already hold, when they are of these
    folds and this recipe: fold number -> (its figures, its per-image outputs, the labels)."""
    if not ((out / REPORT).is_file() and (out / PREDICTIONS).is_file()):
        return {}
    try:
        report = json.loads((out / REPORT).read_text())
    except (OSError, ValueError) as error:  # e.g. cut short by a full disk
        log(f"{out / REPORT}: unreadable ({error}); its folds are not kept, it is written anew")
        return {}
    expected = {"folds": k, "fold_seed": fold_seed, "folds_hash": fold_hash, "recipe": recipe}
    differ = [key for key, value in expected.items() if report.get(key) != _as_json(value)]
    if differ:
        log(
            f"{out / REPORT}: recorded for other {' and '.join(differ)}; its folds are not "
            "kept and the report is written anew"
        )
        return {}
    try:
        with np.load(out / PREDICTIONS) as saved:
            labels = [str(label) for label in saved["labels"]]
            arrays = {key: saved[key] for key in saved.files if key not in ("labels", "fold")}
            fold_of = saved["fold"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise BinDaemonError(
            f"{out / PREDICTIONS}: unreadable ({error}); copy it again beside {REPORT} from "
            "the same sweep, or remove both to train every fold"
        ) from error
    recorded = {}
    for row in report["per_fold"]:
        mine = fold_of == row["fold"]
        if not mine.any():
            raise BinDaemonError(
                f"{out / PREDICTIONS}: holds no outputs of fold {row['fold']}, which "
                f"{out / REPORT} reports; copy both files of the same sweep"
            )
        recorded[row["fold"]] = (row, {key: a[mine] for key, a in arrays.items()}, labels)
    return recorded


def _as_json(value):
    """``value`` as the report reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _report(base, k: int, fold_seed: int, fold_hash: str, images: int, rows: list, started):
    """The figures of the folds finished so far (``complete`` once all ``k`` are)."""
    metrics = {key: spread([r[key] for r in rows]) for key, _ in METRICS}
    return {
        "recipe": _recipe(base),
        "folds": k,
        "folds_finished": len(rows),
        "complete": len(rows) == k,
        "fold_seed": fold_seed,
        "folds_hash": fold_hash,
        "images": images,
        "data": str(base.data),
        # the sweep's own command (a --score-only run scores its folds again, nothing more)
        "command": base.command.replace(" --score-only", ""),
        "teachers": [str(t) for t in base.teachers],
        "resumed_from": None if base.resume is None else str(base.resume),
        "camera_views": {
            "drawn_at": CAMERA_VIEWS_AT,
            "seed": fold_seed + TEST_VIEWS_SEED_OFFSET,
            "then": "resized to each fold model's input size",
        },
        "predictions": PREDICTIONS,
        "teachers_saw_held_out": [
            str(t) for t in base.teachers if not (Path(t) / REPORT).is_file()
        ],
        "per_fold": rows,
        "metrics": metrics,
        "targets": {
            name: {
                "target": f">= {goal}",
                "mean": metrics[name]["mean"],
                "met": metrics[name]["mean"] is not None and metrics[name]["mean"] >= goal,
            }
            for name, goal in TARGETS.items()
        },
        "epochs": {
            "finetune_best": [r["finetune_best_epoch"] for r in rows],
            "head_best": [r["head_best_epoch"] for r in rows],
        },
        # the folds' own training and scoring, however many invocations the sweep took
        "minutes": round(sum(r["minutes"] for r in rows), 1),
        "minutes_this_run": round((time.monotonic() - started) / 60, 1),
    }


def _whole_pool(base, rows: list, logits: np.ndarray, targets: np.ndarray, k: int) -> dict:
    """What whole-pool training takes from the folds: epochs, size, calibration."""
    temperature = calibration.fit_temperature(logits, targets)
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    threshold, curve = calibration.choose_threshold(
        probs, targets, base.target_accepted_accuracy, base.min_coverage
    )
    sizes = Counter(r["input_size"] for r in rows)
    return {
        "finetune_epochs": round(statistics.median(r["finetune_best_epoch"] for r in rows)),
        "head_epochs": round(statistics.median(r["head_best_epoch"] for r in rows)),
        "input_size": max(sizes, key=lambda s: (sizes[s], s)),
        "temperature": round(temperature, 4),
        "unsure_threshold": threshold,
        "coverage_curve": curve,
        "out_of_fold_nll": {
            "at_1": round(calibration.nll(logits, targets, 1.0), 4),
            "at_temperature": round(calibration.nll(logits, targets, temperature), 4),
        },
        "calibration_from": f"{len(targets)} out-of-fold logits of the {k} fold models "
        "(each image predicted by the model that did not train on it)",
    }


def unfinished(report: dict) -> str | None:
    """Why a report cannot stand for its recipe yet (None when every fold is finished)."""
    finished = report.get("folds_finished", report["folds"])
    if finished < report["folds"]:
        return (
            f"its cross-validation is unfinished ({finished} of {report['folds']} folds); "
            "run the same `bin-daemon train --folds` command again to continue it"
        )
    return None


RECIPE_KEYS = (
    "backbone",
    "input_size",
    "export_sizes",
    "finetune_blocks",
    "finetune_lr",
    "batch_size",
    "hard_view_probability",
    "cutmix_probability",
    "label_smoothing",
    "distill_alpha",
    "distill_temperature",
    "qat_epochs",
    "qat_lr",
    "bias_correction",
)


def _recipe(settings) -> dict:
    recipe = {key: getattr(settings, key) for key in RECIPE_KEYS}
    recipe["export_sizes"] = list(recipe["export_sizes"])
    recipe["teachers"] = len(settings.teachers)
    if not settings.teachers:
        recipe.pop("distill_alpha")
        recipe.pop("distill_temperature")
    if not settings.qat_epochs:
        recipe.pop("qat_epochs")
        recipe.pop("qat_lr")
    else:
        recipe.pop("bias_correction")  # QAT exports without it
    return recipe


def recipe_differences(report: dict, settings) -> list[str]:
    """Recipe settings of ``settings`` that differ from the cross-validated recipe's."""
    ours = _recipe(settings)
    theirs = report["recipe"]
    return [
        f"{key} {ours.get(key)!r} (cross-validated: {theirs.get(key)!r})"
        for key in sorted(set(ours) | set(theirs))
        if key != "export_sizes" and ours.get(key) != theirs.get(key)
    ]


def whole_pool_command(settings, out: Path, report: dict) -> str:
    pool = report["whole_pool"]
    parts = [
        "bin-daemon train",
        f"--data {settings.data}",
        f"--backbone {settings.backbone}",
        f"--input-size {settings.input_size}",
        f"--finetune-blocks {settings.finetune_blocks}",
        f"--lr {settings.finetune_lr}",
        f"--batch-size {settings.batch_size}",
        f"--hard-views {settings.hard_view_probability}",
        f"--seed {settings.seed}",
        "--all-data",
        f"--crossval {out}",
        f"--epochs {pool['finetune_epochs']}",
        f"--head-epochs {pool['head_epochs']}",
        f"--export-sizes {' '.join(str(x) for x in settings.export_sizes)}".rstrip(),
    ]
    if settings.qat_epochs:
        parts += [f"--qat-epochs {settings.qat_epochs}", f"--qat-lr {settings.qat_lr}"]
    elif not settings.bias_correction:
        parts += ["--no-bias-correction"]
    if settings.teachers:
        parts += [f"--distill-alpha {settings.distill_alpha}"]
        parts += [f"--distill-temperature {settings.distill_temperature}"]
        # a cross-validated teacher (DIR) teaches the whole pool through its whole-pool model,
        # by convention DIR-pool (docs/TRAINING.md)
        parts += [
            f"--teacher {t}" if not (Path(t) / REPORT).is_file() else f"--teacher {t}-pool"
            for t in settings.teachers
        ]
    return " ".join([*parts, "--out models/"])


SCORES = {"macro_f1", "min_recall", "camera_macro_f1", "flip_macro_f1", "flip_min_recall"}
POINTS = {"int8_minus_float_points", "flip_gain_points", "flip_camera_gain_points"}


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in SCORES:
        return f"{value:.3f}"
    if key in POINTS:
        return f"{value:+.2f}"
    return f"{100 * value:.1f}%"


def _spread_cell(key: str, s: dict) -> str:
    if s["mean"] is None:
        return "-"
    std = (
        f"{s['std']:.2f}"
        if key in POINTS
        else (f"{s['std']:.3f}" if key in SCORES else f"{100 * s['std']:.1f} pt")
    )
    return f"{_fmt(key, s['mean'])} ± {std} ({_fmt(key, s['min'])} to {_fmt(key, s['max'])})"


def _camera_views_line(report: dict) -> str:
    views = report.get("camera_views")
    if views is None:  # a report from before 2026-12-03
        return (
            "Bin-camera views were drawn at each fold model's own input size (milder blur and "
            "noise for a larger model): compare them only between models of one size."
        )
    return (
        f"Bin-camera views drawn at {views['drawn_at']} px (seed {views['seed']}), then "
        "resized to each fold model's input: the same views for every model. Every held-out "
        f"image's outputs are in `{report.get('predictions', PREDICTIONS)}` "
        "(`python -m bin_daemon.training.ensemble` compares and averages sweeps from them)."
    )


def render(report: dict) -> str:
    k = report["folds"]
    rows = report["per_fold"]
    numbers = [r.get("fold", i + 1) for i, r in enumerate(rows)]
    lines = [f"# Cross-validation: {k} folds", ""]
    if reason := unfinished(report):
        lines += [
            f"**Partial:** {reason}. The figures below are those of the finished folds only.",
            "",
        ]
    lines += [
        f"{report['images']} images of `{report['data']}`, stratified folds (seed "
        f"{report['fold_seed']}, folds hash `{report['folds_hash'][:16]}...`, `folds.csv`). "
        f"Command: `{report['command']}`; {report['minutes']} min of fold training "
        f"({report['minutes_this_run']} min in the last invocation).",
        "",
    ]
    if report.get("resumed_from"):
        lines += [
            f"Each fold resumed from the Keras weights of `{report['resumed_from']}`'s fold (its "
            "head and fine-tuning phases, its epochs); the minutes are this sweep's own steps "
            "(any quantisation-aware fine-tuning, the export, the scoring), on top of that sweep's.",
            "",
        ]
    lines += [
        "Each fold's model trained on the other folds (their `val` part for early stopping, "
        "inference size, temperature and threshold) and was scored on its held-out fold by the "
        "daemon's own path, clean and under bin-camera conditions; bin figures under the "
        "bundled default config's bins, contamination by top-1 label, coverage at the fold's "
        "unsure threshold. Mean ± sample standard deviation over folds (min to max).",
        "",
        _camera_views_line(report),
        "",
        "| metric | mean ± sd (min to max) | " + " | ".join(f"fold {n}" for n in numbers) + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    for key, label in METRICS:
        s = report["metrics"][key]
        lines.append(
            f"| {label} | {_spread_cell(key, s)} | "
            + " | ".join(_fmt(key, v) for v in s["folds"])
            + " |"
        )
    lines += [
        "| fine-tuning epoch kept by early stopping | | "
        + " | ".join(f"{r['finetune_best_epoch']} of {r['finetune_epochs_run']}" for r in rows)
        + " |",
        "| head epoch kept | | " + " | ".join(str(r["head_best_epoch"]) for r in rows) + " |",
        "| inference size | | " + " | ".join(f"{r['input_size']} px" for r in rows) + " |",
        "| minutes | | " + " | ".join(str(r["minutes"]) for r in rows) + " |",
        "",
        f"## Targets (issue 15, on the cross-validated mean of {len(rows)} of {k} folds)",
        "",
        "| target | goal | mean | met |",
        "|---|---|---|---|",
    ]
    for name, t in report["targets"].items():
        lines.append(
            f"| {name} | {t['target']} | {_fmt(name, t['mean'])} | {'yes' if t['met'] else '**no**'} |"
        )
    if report["teachers"]:
        lines += [
            "",
            "Distilled from: " + ", ".join(f"`{t}`" for t in report["teachers"]) + ".",
        ]
        if report["teachers_saw_held_out"]:
            lines.append(
                "**Optimistic:** these teachers are plain model folders and may have trained on "
                "the held-out folds: " + ", ".join(report["teachers_saw_held_out"]) + "."
            )
    if "whole_pool" not in report:
        return "\n".join(lines) + "\n"
    pool = report["whole_pool"]
    lines += [
        "",
        "## For whole-pool training",
        f"- Epochs: fine-tuning {pool['finetune_epochs']}, head {pool['head_epochs']} (median "
        "of the epochs early stopping kept in the folds); inference size "
        f"{pool['input_size']} px (the folds' most frequent choice).",
        f"- Temperature {pool['temperature']} and unsure threshold {pool['unsure_threshold']}, "
        f"fitted on {pool['calibration_from']}; out-of-fold NLL {pool['out_of_fold_nll']['at_1']} "
        f"at T=1, {pool['out_of_fold_nll']['at_temperature']} at the fitted T.",
        f"- Command: `{pool['command']}`",
    ]
    return "\n".join(lines) + "\n"
