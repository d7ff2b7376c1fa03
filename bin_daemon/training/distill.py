"""Knowledge distillation (Hinton, Vinyals, Dean 2015): a student learns the teachers' soft labels.

Teachers are model folders of this project (``waste_classifier.tflite`` + ``model_card.json``,
int8 or float), run by :class:`~bin_daemon.training.tflite_eval.TFLiteModel` as the daemon
runs them. Each training batch's augmented views are drawn once, large enough for the
largest input; the student and every teacher get them at their own input size through
:func:`bin_daemon.model.preprocess.to_model_input`, so a Lite2 teacher at 416 px teaches a
Lite0 student at 288 px on the same views.

A teacher outputs calibrated probabilities ``softmax(z / T_cal)`` (its card's temperature);
``T_cal * log p`` gives back its logits ``z`` up to a constant, and the soft label is
``softmax(z / T)`` at the distillation temperature ``T``. An ensemble averages its teachers'
soft labels. Probabilities of an int8 teacher come in steps of 1/256: ``p`` is floored at half
a step before the log, so a class the teacher rules out gets a small, finite logit.

The loss per item, with the student's logits ``s``, the (smoothed, CutMix-mixed) hard label
``y`` and the soft label ``q``::

    (1 - alpha) * CE(y, softmax(s)) + alpha * T**2 * CE(q, softmax(s / T))

(``T**2`` keeps the soft term's gradients on the hard term's scale, as in the paper; cross
entropy and KL divergence differ by the teacher's entropy, a constant). With ``alpha = 1``
the student's only targets are the teachers' soft labels.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.preprocess import to_model_input
from bin_daemon.training.data import AugmentedBatches
from bin_daemon.training.tflite_eval import TFLiteModel

PROBABILITY_FLOOR = 0.5 / 256


def soften(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), row-wise."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=-1, keepdims=True)


def distillation_loss(
    n_classes: int, alpha: float, temperature: float, label_smoothing: float = 0.0
):
    """Keras loss on targets ``[hard | soft]`` (2 * n_classes columns) and student logits."""
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"distillation: alpha {alpha} (0..1), temperature {temperature} (> 0)")

    def loss(y_true, logits):
        hard, soft = y_true[:, :n_classes], y_true[:, n_classes:]
        if label_smoothing:
            hard = hard * (1.0 - label_smoothing) + label_smoothing / n_classes
        hard_term = -ops.sum(hard * ops.log_softmax(logits, axis=-1), axis=-1)
        soft_term = -ops.sum(soft * ops.log_softmax(logits / temperature, axis=-1), axis=-1)
        return (1.0 - alpha) * hard_term + alpha * temperature**2 * soft_term

    loss.__name__ = "distillation_loss"
    return loss


def hard_accuracy(n_classes: int) -> keras.metrics.Metric:
    """Top-1 accuracy against the hard half of ``[hard | soft]`` targets (logged as accuracy)."""

    def accuracy(y_true, logits):
        return ops.cast(
            ops.argmax(y_true[:, :n_classes], axis=-1) == ops.argmax(logits, axis=-1), "float32"
        )

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


class Teacher:
    """One teacher model folder: its own input size, its logits recovered from its scores."""

    def __init__(self, model_dir: Path, labels: list[str], threads: int = 2):
        if (model_dir / "crossval.json").is_file():
            raise BinDaemonError(
                f"teacher {model_dir}: a cross-validation folder teaches only its folds; for "
                "whole-pool training give its whole-pool model (DIR-pool, docs/TRAINING.md)"
            )
        try:
            card = json.loads((model_dir / "model_card.json").read_text())
            model = (model_dir / card.get("model_file", "waste_classifier.tflite")).read_bytes()
        except (OSError, ValueError) as error:
            raise BinDaemonError(f"teacher {model_dir}: not a model folder ({error})") from error
        if card.get("labels") != labels:
            raise BinDaemonError(
                f"teacher {model_dir}: labels {card.get('labels')}, the data's are {labels}"
            )
        self.path = model_dir
        self.sha256 = hashlib.sha256(model).hexdigest()
        self.size = int(card["input"]["size"])
        self.calibration_temperature = float(card.get("temperature", 1.0))
        self.model = TFLiteModel(model, threads)
        self.lock = threading.Lock()  # one interpreter, batches made by several threads

    def logits(self, views: np.ndarray) -> np.ndarray:
        """Logits (up to a per-row constant) of square uint8 views of any size."""
        inputs = np.stack([to_model_input(v, self.size) for v in views])
        with self.lock:
            probs = self.model.predict(inputs)
        return self.calibration_temperature * np.log(np.maximum(probs, PROBABILITY_FLOOR))


class Teachers:
    """An ensemble: the mean of the teachers' soft labels; times its own cost."""

    def __init__(self, teachers: list[Teacher], temperature: float):
        if not teachers:
            raise ValueError("no teachers")
        self.teachers, self.temperature = teachers, temperature
        self.seconds, self.calls = 0.0, 0
        self.total_seconds, self.total_calls = 0.0, 0
        self._lock = threading.Lock()

    @property
    def largest_size(self) -> int:
        return max(t.size for t in self.teachers)

    def soft_labels(self, views: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        soft = np.mean([soften(t.logits(views), self.temperature) for t in self.teachers], axis=0)
        with self._lock:
            spent = time.perf_counter() - started
            self.seconds += spent
            self.calls += 1
            self.total_seconds += spent
            self.total_calls += 1
        return soft.astype(np.float32)

    def take_cost(self) -> tuple[float, int]:
        """(seconds, batches) since the last call, and start counting again."""
        with self._lock:
            taken = (self.seconds, self.calls)
            self.seconds, self.calls = 0.0, 0
        return taken


class DistillBatches(AugmentedBatches):
    """AugmentedBatches whose targets are ``[hard | soft]``, and per-item class weights.

    Views are drawn at ``view_size`` (the largest of the student's and the teachers' sizes);
    CutMix is applied there, so the teachers label the mixed image the student sees.
    """

    def __init__(self, *args, teachers: Teachers, view_size: int, class_weight=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teachers, self.view_size = teachers, view_size
        self.class_weight = class_weight

    def __getitem__(self, index: int):
        views, hard = self.draw(index, self.view_size)
        soft = self.teachers.soft_labels(views)
        x = (
            views
            if self.view_size == self.size
            else np.stack([to_model_input(v, self.size) for v in views])
        )
        y = np.concatenate([hard, soft], axis=1)
        if self.class_weight is None:
            return x.astype(np.float32), y
        weights = np.array([self.class_weight[int(c)] for c in hard.argmax(1)], np.float32)
        return x.astype(np.float32), y, weights


class DistillCost(keras.callbacks.Callback):
    """Logs, per epoch, what a batch cost: the teachers' share and the whole step."""

    def __init__(self, teachers: Teachers, batches: int, log):
        super().__init__()
        self.teachers, self.batches, self.log = teachers, batches, log
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        self.teachers.take_cost()

    def on_epoch_end(self, epoch, logs=None):
        seconds, calls = self.teachers.take_cost()
        step = (time.monotonic() - self.started) / max(self.batches, 1)
        per_batch = seconds / max(calls, 1)
        self.log(
            f"distillation epoch {epoch + 1}: teachers {1000 * per_batch:.0f} ms per batch "
            f"({len(self.teachers.teachers)} teachers, {calls} batches, made in the data "
            f"threads while the student trains), {1000 * step:.0f} ms per batch in all"
        )


def teacher_targets(teachers: Teachers, views: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """``[hard | soft]`` for fixed views (the validation images)."""
    return np.concatenate([hard.astype(np.float32), teachers.soft_labels(views)], axis=1)
