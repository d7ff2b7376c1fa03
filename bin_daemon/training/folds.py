"""Seeded, stratified k-fold assignment of a dataset, and one fold as a train/val/test split.

The habits of :mod:`bin_daemon.training.split`: images sorted by path, each identified by
its sha256, shuffled per class by ``random.Random(seed)``. Every image is held out by exactly
one fold; each class is spread over the folds as evenly as its count allows. Within a fold,
the images not held out are split per class into ``train`` and ``val`` (early stopping and
the inference size are chosen on ``val``); the held-out fold is the fold's ``test``.
"""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path

from bin_daemon.training.split import Sample

# a run's test split's float logits (before temperature), which cross-validation pools
HELD_OUT_FILE = "held_out_logits.npz"


def stratified_kfold(samples: list[Sample], k: int, seed: int) -> dict[str, int]:
    """Path -> fold (0..k-1): per class, shuffled from ``seed``, dealt round-robin.

    The dealing continues where the previous class stopped, so the folds' total sizes also
    differ by at most one image.
    """
    if k < 2:
        raise ValueError(f"folds: {k}; expected at least 2")
    rng = random.Random(seed)
    folds: dict[str, int] = {}
    dealt = 0
    for label in sorted({s.label for s in samples}):
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.path)
        if len(members) < k:
            raise ValueError(f"class {label!r} has {len(members)} images; {k} folds need {k}")
        rng.shuffle(members)
        for sample in members:
            folds[sample.path] = dealt % k
            dealt += 1
    return folds


def fold_split(
    samples: list[Sample], folds: dict[str, int], fold: int, seed: int, val_fraction: float = 0.15
) -> list[Sample]:
    """Fold ``fold`` (0-based) held out as ``test``; the rest split per class into train/val."""
    rng = random.Random(f"{seed}/{fold}")
    out = [Sample(s.path, s.label, s.sha256, "test") for s in samples if folds[s.path] == fold]
    for label in sorted({s.label for s in samples}):
        rest = sorted(
            (s for s in samples if s.label == label and folds[s.path] != fold),
            key=lambda s: s.path,
        )
        rng.shuffle(rest)
        n_val = max(1, round(len(rest) * val_fraction))
        out += [
            Sample(s.path, s.label, s.sha256, "val" if i < n_val else "train")
            for i, s in enumerate(rest)
        ]
    return sorted(out, key=lambda s: s.path)


def write_folds(samples: list[Sample], folds: dict[str, int], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "sha256", "fold"])
        for s in sorted(samples, key=lambda s: s.path):
            writer.writerow([s.path, s.label, s.sha256, folds[s.path] + 1])


def folds_hash(samples: list[Sample], folds: dict[str, int]) -> str:
    """sha256 over sorted (path, image sha256, fold): two runs with it held out the same images."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        digest.update(f"{s.path}\t{s.sha256}\t{folds[s.path]}\n".encode())
    return digest.hexdigest()
