"""The training run: split, train, calibrate, export to full int8, evaluate, write the card.

``bin-daemon train --data DIR --backbone efficientnet-lite0 --out models/`` runs it all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.metrics import report
from bin_daemon.model.preprocess import load_image, to_model_input
from bin_daemon.site.head import REFERENCE_KEY
from bin_daemon.training import calibration
from bin_daemon.training.backbones import Backbone, efficientnet_lite
from bin_daemon.training.bias_correction import correct_biases
from bin_daemon.training.camera_effects import (
    CORRUPTIONS,
    TEST_VIEWS_SEED_OFFSET,
    VAL_VIEWS_SEED_OFFSET,
    augment,
    bin_camera_view,
    corrupted_view,
)
from bin_daemon.training.data import load_model_inputs
from bin_daemon.training.distill import (
    DistillBatches,
    Teacher,
    Teachers,
    distillation_loss,
    hard_accuracy,
    teacher_targets,
)
from bin_daemon.training.embedding_output import embedding_entry
from bin_daemon.training.export import inference_model, to_float_tflite, to_int8_tflite
from bin_daemon.training.folds import HELD_OUT_FILE
from bin_daemon.training.phases import (
    FITTING_KEYS,
    WEIGHTS_FILE,
    Progress,
    TrainSettings,
    augmented_batches,
    choose_split,
    class_weights,
    fine_tune,
    load_run_data,
    log,
    network,
    settings_record,
    starting_weights,
    train_head,
    training_loss,
)
from bin_daemon.training.qat import (
    Int8Conv2D,
    Int8DepthwiseConv2D,
    activation_ranges,
    copy_weights,
    fake_quant_tap,
)
from bin_daemon.training.split import Sample, dataset_hash, read_split, scan_dataset, write_split
from bin_daemon.training.tflite_eval import TFLiteModel, embedding_reference

MODEL_FILE = "waste_classifier.tflite"


def train(settings: TrainSettings) -> dict:
    """Run everything and write the model folder; returns the card."""
    started = time.monotonic()
    keras.utils.set_random_seed(settings.seed)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    size = settings.input_size

    all_samples = scan_dataset(settings.data)
    split = choose_split(settings, all_samples)
    write_split(split, out / "split.csv")
    labels = sorted({s.label for s in split})
    teachers = _teachers(settings, labels)
    view_size = max(size, teachers.largest_size) if teachers else size
    data = load_run_data(settings, split, labels, view_size)
    subsets, sizes, has_val, has_test = data.subsets, data.sizes, data.has_val, data.has_test
    train_images, y_train = data.train_images, data.y_train
    x_val, y_val, x_test, y_test = data.x_val, data.y_val, data.x_test, data.y_test
    test_originals = subsets["test"]
    log(f"images decoded in {time.monotonic() - started:.0f} s")

    model, backbone, (dropout, head) = network(settings, len(labels), starting_weights(settings))
    loss = training_loss(settings)

    def onehot(y):
        return keras.utils.to_categorical(y, len(labels))

    class_weight = class_weights(y_train, len(labels))
    if teachers:
        batches = augmented_batches(
            settings,
            data,
            onehot(y_train),
            cls=DistillBatches,
            teachers=teachers,
            view_size=view_size,
            class_weight=class_weight,
        )
        val_targets = (
            teacher_targets(
                teachers, load_model_inputs(settings.data, subsets["val"], view_size), onehot(y_val)
            )
            if has_val
            else None
        )
    else:
        batches = augmented_batches(settings, data, onehot(y_train))
        val_targets = onehot(y_val)
    val = (x_val.astype(np.float32), val_targets) if has_val else None

    compile_args: dict = {"loss": loss, "metrics": ["accuracy"]}
    if teachers:
        compile_args = {
            "loss": distillation_loss(
                len(labels),
                settings.distill_alpha,
                settings.distill_temperature,
                settings.label_smoothing,
            ),
            "metrics": [hard_accuracy(len(labels))],
        }
    resumed: dict = {}
    if settings.resume is not None:
        resumed = _resume(settings, split, model)
        head_epochs_run, head_best = resumed["head_epochs_run"], resumed["head_best_epoch"]
        epochs_run, best_epoch = resumed["finetune_epochs_run"], resumed["finetune_best_epoch"]
    else:
        head_epochs_run, head_best = train_head(
            settings, backbone, (dropout, head), loss, train_images, y_train,
            (x_val, y_val), class_weight,
        )  # fmt: skip
        epochs_run, best_epoch = fine_tune(
            settings, backbone, model, batches, val, class_weight, compile_args, teachers
        )
    train_seconds = time.monotonic() - started
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(settings.work_dir / WEIGHTS_FILE)

    # Random crops showed objects larger in training than a whole-square view does: choose the
    # inference size on validation (FixRes); the convolutions and head work at any size.
    scores = {}
    for candidate in sizes if has_val else []:
        candidate_model = _at_size(model, settings.backbone, candidate, len(labels))
        x_candidate = (
            x_val
            if candidate == size
            else load_model_inputs(settings.data, subsets["val"], candidate)
        )
        logits_c = candidate_model.predict(x_candidate.astype(np.float32), verbose=0)
        scores[candidate] = (
            float((logits_c.argmax(1) == y_val).mean()),
            -calibration.nll(logits_c, y_val, 1.0),
        )
    if has_val:
        export_size = max(sizes, key=lambda c: (scores[c], -c))
        log(
            "validation accuracy by input size: "
            + ", ".join(f"{c}px {a:.3f}" for c, (a, _) in scores.items())
            + f" -> {export_size}px"
        )
    else:
        assert settings.calibration is not None
        export_size = int(settings.calibration.get("input_size") or size)
        log(f"inference size {export_size}px, as the cross-validation's folds chose")
    if export_size != size:
        model = _at_size(model, settings.backbone, export_size, len(labels))
        size = export_size
        x_val = load_model_inputs(settings.data, subsets["val"], size)
        x_test = load_model_inputs(settings.data, test_originals, size)

    rng = np.random.default_rng(settings.seed + 1)
    picks = rng.choice(
        len(train_images), size=min(settings.representative_count, len(train_images)), replace=False
    )
    representative = np.stack(
        [
            augment(train_images[i], size, rng) if j % 2 else load_clean(train_images[i], size)
            for j, i in enumerate(picks)
        ]
    )
    exported = float_model = model  # the converter's input; the float twin of the int8 model
    qat_record = None
    if settings.qat_epochs:  # then ``model`` computes as the int8 model will
        model, ranges, qat_record = _quantisation_aware(
            settings, model, size, len(labels), representative, batches, class_weight,
            compile_args, (x_val, y_val),
        )  # fmt: skip
        # plain kernels: the converter rounds them as the training did; the ranges it keeps
        exported = _at_size(model, settings.backbone, size, len(labels), ranges)
        float_model = _at_size(model, settings.backbone, size, len(labels))

    if has_val:
        val_logits = model.predict(x_val.astype(np.float32), verbose=0)
        temperature = calibration.fit_temperature(val_logits, y_val)
        log(
            f"temperature {temperature:.3f} (val NLL "
            f"{calibration.nll(val_logits, y_val, 1.0):.4f} -> "
            f"{calibration.nll(val_logits, y_val, temperature):.4f})"
        )
    else:
        assert settings.calibration is not None
        temperature = float(settings.calibration["temperature"])
        log(f"temperature {temperature:.3f}, fitted on the folds' out-of-fold logits")
    if has_test:  # held-out logits (before temperature): cross-validation pools them
        np.savez(
            out / HELD_OUT_FILE,
            paths=np.array([s.path for s in test_originals]),
            targets=y_test,
            logits=model.predict(x_test.astype(np.float32), verbose=0),
        )

    bias_record = None
    if settings.bias_correction and not settings.qat_epochs:  # QAT trained its biases rounded
        exported = _at_size(exported, settings.backbone, size, len(labels))  # a copy
        bias_record = correct_biases(exported, representative)
        log(
            f"int8 bias correction: {bias_record['layers']} convolutions, largest shift "
            f"{bias_record['largest_shift']:g}"
        )
    int8_bytes = to_int8_tflite(_inference(exported, temperature), representative)
    float_bytes = to_float_tflite(_inference(float_model, temperature))
    int8 = TFLiteModel(int8_bytes, settings.threads)
    float_tfl = TFLiteModel(float_bytes, settings.threads)

    if has_val:
        val_probs = int8.predict(x_val)
        threshold, curve = calibration.choose_threshold(
            val_probs, y_val, settings.target_accepted_accuracy, settings.min_coverage
        )
        val_bin_camera = _bin_camera_accuracy(
            int8,
            [load_image(settings.data / s.path) for s in subsets["val"]],
            y_val,
            size,
            settings.seed + VAL_VIEWS_SEED_OFFSET,
        )
        log(f"validation under bin-camera conditions: {val_bin_camera:.3f}")
    else:
        assert settings.calibration is not None
        threshold = float(settings.calibration["unsure_threshold"])
        curve = settings.calibration.get("coverage_curve", [])
        val_probs, val_bin_camera = None, None
    test_int8 = test_float = int8_report = float_report = robustness = None
    if has_test:
        test_int8 = int8.predict(x_test)
        test_float = float_tfl.predict(x_test)
        int8_report = report(labels, y_test, test_int8.argmax(1))
        float_report = report(labels, y_test, test_float.argmax(1))
        log(
            f"test: float {float_report.accuracy:.4f}, int8 {int8_report.accuracy:.4f}, "
            f"macro-F1 {int8_report.macro_f1:.4f}, min recall {int8_report.min_recall:.3f}"
        )
        robustness = _robustness(int8, settings, test_originals, y_test, labels, size)
        log("bin-camera: " + ", ".join(f"{k} {v:.3f}" for k, v in robustness.items()))
    int8_latency = int8.latency_ms(representative[0])
    float_latency = float_tfl.latency_ms(representative[0])

    (out / MODEL_FILE).write_bytes(int8_bytes)
    (out / "labels.txt").write_text("\n".join(labels) + "\n")
    started_reference = time.monotonic()
    reference = embedding_reference(int8, out / MODEL_FILE, settings.data, subsets["train"], size)
    log(
        f"site head centre from {reference['n']} training images in "
        f"{time.monotonic() - started_reference:.0f} s"
    )
    results = {
        "backbone": settings.backbone,
        "backbone_groups": len(backbone.trainable_groups),
        "labels": labels,
        "input_size": size,
        "train_input_size": settings.input_size,
        "validation_by_input_size": {str(c): a for c, (a, _) in scores.items()},
        "temperature": temperature,
        "unsure_threshold": threshold,
        "coverage_curve": curve,
        "val_int8_accuracy": (
            None if val_probs is None else float((val_probs.argmax(1) == y_val).mean())
        ),
        "val_bin_camera_accuracy": val_bin_camera,
        "test_int8": None if int8_report is None else int8_report.as_dict(),
        "test_float": None if float_report is None else float_report.as_dict(),
        "test_int8_accepted": (
            None if test_int8 is None else calibration.accepted_stats(test_int8, y_test, threshold)
        ),
        "bin_camera": robustness,
        "latency_ms": {
            "int8_p50": int8_latency[0],
            "int8_p95": int8_latency[1],
            "float_p50": float_latency[0],
            "float_p95": float_latency[1],
            "threads": settings.threads,
        },
        "size_bytes": {"int8": len(int8_bytes), "float": len(float_bytes)},
        "embedding": embedding_entry(int8_bytes),
        REFERENCE_KEY: reference,
        "dataset": {
            "root": str(settings.data),
            "hash": dataset_hash(all_samples),
            "images": len(all_samples),
            "split_seed": settings.seed,
            "split_file": "split.csv",
            "counts": {k: len(v) for k, v in subsets.items()},
        },
        "qat": qat_record,
        "bias_correction": bias_record,
        "training": {
            **settings_record(settings),
            "finetune_epochs_run": epochs_run,
            "finetune_best_epoch": best_epoch,
            "head_epochs_run": head_epochs_run,
            "head_best_epoch": head_best,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            # where the resumed run's phases ran (a fit-only run: its backend and device)
            **{
                f"resumed_{key}": resumed[key]
                for key in ("fitted_on", "train_seconds")
                if key in resumed
            },
        },
    }
    if teachers:
        results["distillation"] = {
            "teachers": [
                {"path": str(t.path), "sha256": t.sha256, "input_size": t.size}
                for t in teachers.teachers
            ],
            "alpha": settings.distill_alpha,
            "temperature": settings.distill_temperature,
            "view_size": view_size,
            "teacher_ms_per_batch": round(
                1000 * teachers.total_seconds / max(teachers.total_calls, 1), 1
            ),
        }
    (out / "training_results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"done in {time.monotonic() - started:.0f} s")
    return results


def _resume(settings: TrainSettings, split: list[Sample], model: keras.Model) -> dict:
    """Load the Keras weights of the finished run in ``settings.resume`` (same split, same
    training recipe) into ``model``; returns that run's training record."""
    folder = settings.resume
    assert folder is not None
    try:
        record = json.loads((folder / "training_results.json").read_text())["training"]
        same_split = read_split(folder / "split.csv") == split
    except (OSError, ValueError, KeyError) as error:
        raise BinDaemonError(
            f"--resume {folder}: not a finished training run ({error}); give a model folder "
            "that bin-daemon train wrote (with --folds: a cross-validation folder)"
        ) from error
    if not same_split:
        raise BinDaemonError(f"--resume {folder}: trained on another split than this run's")
    differences = [
        f"{key} {record[key]!r} (this command: {getattr(settings, key)!r})"
        for key in FITTING_KEYS
        if key in record and record[key] != getattr(settings, key)
    ]
    if differences:  # its report would name this command's recipe for that run's weights
        raise BinDaemonError(
            f"--resume {folder}: trained with other recipe settings: {'; '.join(differences)}; "
            "give the flags it was trained with"
        )
    # a fit-only run (training.fit_only) keeps its weights in its folder
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        weights = Path(record["work_dir"]) / WEIGHTS_FILE
    if not weights.is_file():
        raise BinDaemonError(f"--resume {folder}: its Keras weights {weights} are gone")
    model.load_weights(weights)
    log(f"resumed from {weights} (the head and fine-tuning phases of {folder})")
    return record


def _quantisation_aware(
    settings: TrainSettings,
    model: keras.Model,
    size: int,
    n_classes: int,
    representative: np.ndarray,
    batches,
    class_weight: dict[int, float],
    compile_args: dict,
    validation: tuple[np.ndarray, np.ndarray],
) -> tuple[keras.Model, dict[str, tuple[float, float]], dict]:
    """Fine-tune ``model`` (at export size ``size``), every layer, as the int8 model computes:
    int8-rounded kernels, activations fake-quantised at the representative set's ranges
    (training.qat). Returns that network at ``size``, the ranges, and a record with
    validation accuracy (at ``size``) before and after."""
    started = time.monotonic()
    ranges = activation_ranges(model, settings.backbone, representative)
    x_val, y_val = validation

    def val_accuracy(network: keras.Model) -> float | None:
        if not len(y_val):
            return None
        return float(
            (network.predict(x_val.astype(np.float32), verbose=0).argmax(1) == y_val).mean()
        )

    before = {
        "val_float": val_accuracy(model),
        "val_fake_quant_before": val_accuracy(
            _at_size(model, settings.backbone, size, n_classes, ranges, int8_weights=True)
        ),
    }
    trainee, _ = _build(
        settings.backbone, settings.input_size, n_classes, ranges, settings.dropout, True
    )
    copy_weights(model, trainee)
    trainee.trainable = True
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.qat_lr, decay_steps=len(batches) * settings.qat_epochs, alpha=0.02
    )
    trainee.compile(
        keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay), **compile_args
    )
    log(
        f"phase 3: quantisation-aware fine-tuning, {settings.qat_epochs} epochs at "
        f"{settings.qat_lr:g}, every layer, int8-rounded kernels, {len(ranges)} fake-quantised "
        "activations"
    )
    trainee.fit(
        batches,
        epochs=settings.qat_epochs,
        class_weight=None if settings.teachers else class_weight,
        verbose=0,
        callbacks=[Progress("QAT", settings.qat_epochs, log)],
    )
    quantised = _at_size(trainee, settings.backbone, size, n_classes, ranges, int8_weights=True)
    widths = sorted(hi - lo for lo, hi in ranges.values())
    after = val_accuracy(quantised)
    if after is not None:
        log(
            f"validation accuracy: float {before['val_float']:.3f}, fake-quantised "
            f"{before['val_fake_quant_before']:.3f} before QAT and {after:.3f} after"
        )
    return (
        quantised,
        ranges,
        {
            **before,
            "val_fake_quant_after": after,
            "epochs": settings.qat_epochs,
            "lr": settings.qat_lr,
            "activations": len(ranges),
            "range_width_median": round(widths[len(widths) // 2], 3),
            "range_width_max": round(widths[-1], 3),
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def _teachers(settings: TrainSettings, labels: list[str]) -> Teachers | None:
    if not settings.teachers:
        return None
    return Teachers(
        [Teacher(Path(t), labels, settings.threads) for t in settings.teachers],
        settings.distill_temperature,
    )


def _inference(network: keras.Model, temperature: float) -> keras.Model:
    """``network`` (pixels -> logits) as the exported model: calibrated probabilities."""
    features = keras.Model(network.input, network.get_layer("head_dropout").input)
    return inference_model(features, network.get_layer("classes"), temperature)


def _build(
    variant: str,
    size: int,
    n_classes: int,
    ranges=None,
    dropout: float = 0.0,
    int8_weights: bool = False,
) -> tuple[keras.Model, Backbone]:
    """The classifier network (backbone, dropout, class layer) at a (size, size, 3) input;
    with fake-quantised activations at ``ranges`` if given, and convolutions computing with
    int8-rounded kernels if ``int8_weights`` (training.qat)."""
    convolutions = {"conv": Int8Conv2D, "depthwise": Int8DepthwiseConv2D} if int8_weights else {}
    tap = fake_quant_tap(ranges) if ranges else None
    backbone = efficientnet_lite(variant, size, tap=tap, **convolutions)
    logits = keras.layers.Dense(n_classes, name="classes")(
        keras.layers.Dropout(dropout, name="head_dropout")(backbone.model.output)
    )
    return keras.Model(backbone.model.input, logits), backbone


def _at_size(
    model: keras.Model,
    variant: str,
    size: int,
    n_classes: int,
    ranges=None,
    int8_weights: bool = False,
) -> keras.Model:
    """The same trained network with a (size, size, 3) input (fake-quantised as _build)."""
    resized, _ = _build(variant, size, n_classes, ranges, int8_weights=int8_weights)
    copy_weights(model, resized)
    return resized


def load_clean(image: np.ndarray, size: int) -> np.ndarray:
    return to_model_input(image, size)


def _bin_camera_accuracy(
    model: TFLiteModel, originals: list[np.ndarray], y_true: np.ndarray, size: int, seed: int
) -> float:
    """int8 accuracy on bin-camera views of ``originals`` (the validation images: to choose by)."""
    rng = np.random.default_rng(seed)
    views = np.stack([bin_camera_view(img, size, rng) for img in originals])
    return float((model.predict(views).argmax(1) == y_true).mean())


def _robustness(
    model: TFLiteModel, settings: TrainSettings, samples, y_true, labels, size: int
) -> dict[str, float]:
    """int8 accuracy on the test split under each corruption and the combined bin-camera view."""
    originals = [load_image(settings.data / s.path) for s in samples]
    results = {}
    for name in [*CORRUPTIONS, "bin_camera"]:
        rng = np.random.default_rng(settings.seed + TEST_VIEWS_SEED_OFFSET)
        if name == "bin_camera":
            views = np.stack([bin_camera_view(img, size, rng) for img in originals])
        else:
            views = np.stack([corrupted_view(img, name, size, rng) for img in originals])
        results[name] = report(labels, y_true, model.predict(views).argmax(1)).accuracy
    return results
