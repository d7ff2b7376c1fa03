"""Images in memory for training: decoded once, shrunk once, served as augmented batches."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from bin_daemon.model.preprocess import load_image, shrink_to, to_model_input
from bin_daemon.training.camera_effects import augment
from bin_daemon.training.split import Sample


def shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` (never enlarges)."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    if scale >= 1.0:
        return image
    return shrink_to(image, round(width * scale), round(height * scale))


def load_for_training(root: Path, samples: list[Sample], short_side: int) -> list[np.ndarray]:
    return [shrink(load_image(root / s.path), short_side) for s in samples]


def load_model_inputs(root: Path, samples: list[Sample], size: int) -> np.ndarray:
    """Exactly what the daemon feeds the model for each image: (N, size, size, 3) uint8
    (N may be 0: a whole-pool run has no validation or test images)."""
    if not samples:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([to_model_input(load_image(root / s.path), size) for s in samples])


def load_features(
    features: keras.Model, images: list[np.ndarray], size: int, views: int, seed: int
) -> np.ndarray:
    """Frozen-backbone features of ``views`` random views of every image, view-major."""
    rng = np.random.default_rng(seed + 2)
    out = []
    for _ in range(views):
        batch = np.stack([augment(image, size, rng) for image in images]).astype(np.float32)
        out.append(features.predict(batch, batch_size=32, verbose=0))
    return np.concatenate(out)


class AugmentedBatches(keras.utils.PyDataset):
    """One epoch = every training image once, each as a fresh random bin-camera view.

    Batches are made by ``workers`` threads while the model trains (OpenCV and numpy let go
    of the GIL), so each batch draws from its own generator, seeded by (seed, epoch, batch):
    the views are the same whatever order the threads finish in.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        targets: np.ndarray,
        size: int,
        batch_size: int,
        seed: int,
        cutmix_probability: float = 0.0,
        hard_probability: float = 0.0,
        workers: int = 2,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        self.images, self.targets = images, targets
        self.size, self.batch_size = size, batch_size
        self.cutmix_probability = cutmix_probability
        self.hard_probability = hard_probability
        self.seed, self.epoch = seed, 0
        self.order = self._shuffled()

    def _shuffled(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        x, y = self.draw(index, self.size)
        return x.astype(np.float32), y

    def draw(self, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index``'s uint8 views at ``size`` px (CutMix applied) and its targets."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = np.stack([augment(self.images[i], size, rng, self.hard_probability) for i in chosen])
        y = self.targets[chosen].astype(np.float32)
        if len(chosen) > 1 and rng.random() < self.cutmix_probability:
            x, y = cutmix(x, y, rng)
        return x, y

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._shuffled()


def cutmix(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste a random box from a shuffled copy of the batch; mix the labels by pasted area."""
    size = x.shape[1]
    partner = rng.permutation(len(x))
    keep = rng.beta(1.0, 1.0)
    side = int(size * np.sqrt(1.0 - keep))
    if side == 0:
        return x, y
    top, left = rng.integers(0, size - side + 1, size=2)
    mixed = x.copy()
    mixed[:, top : top + side, left : left + side] = x[
        partner, top : top + side, left : left + side
    ]
    pasted = side * side / (size * size)
    return mixed, (1.0 - pasted) * y + pasted * y[partner]
