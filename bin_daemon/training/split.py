"""The dataset as a list of images, and its seeded, stratified train/validation/test split.

A dataset is a folder of class folders (folder name = label). Every image is identified by
its path relative to the dataset root and the sha256 of its bytes; the split file records
both, so a later run can prove it used the same images.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SUBSETS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root, with forward slashes
    label: str
    sha256: str
    subset: str = ""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scan_dataset(root: Path) -> list[Sample]:
    """Every image under ``root/<label>/``, sorted by path, with its sha256."""
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                rel = image.relative_to(root).as_posix()
                samples.append(Sample(rel, class_dir.name, sha256_file(image)))
    if not samples:
        raise FileNotFoundError(f"{root}: no images found in class folders")
    return samples


def dataset_hash(samples: list[Sample]) -> str:
    """One sha256 over the sorted (path, label, image sha256) triples: the data's fingerprint."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.path):
        digest.update(f"{sample.path}\t{sample.label}\t{sample.sha256}\n".encode())
    return digest.hexdigest()


def stratified_split(
    samples: list[Sample], seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> list[Sample]:
    """Assign each sample to train/val/test, per class, reproducibly from ``seed``."""
    rng = random.Random(seed)
    out: list[Sample] = []
    labels = sorted({s.label for s in samples})
    for label in labels:
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.path)
        rng.shuffle(members)
        n_test = max(1, round(len(members) * test_fraction))
        n_val = max(1, round(len(members) * val_fraction))
        for i, sample in enumerate(members):
            subset = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            out.append(Sample(sample.path, sample.label, sample.sha256, subset))
    return sorted(out, key=lambda s: s.path)


def write_split(samples: list[Sample], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "sha256", "subset"])
        for s in samples:
            writer.writerow([s.path, s.label, s.sha256, s.subset])


def read_split(path: Path) -> list[Sample]:
    with path.open(newline="") as handle:
        return [
            Sample(r["path"], r["label"], r["sha256"], r["subset"]) for r in csv.DictReader(handle)
        ]


def limit_per_class(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples of each (label, subset): a tiny dataset for smoke tests."""
    if limit is None:
        return samples
    out, seen = [], {}
    for sample in samples:
        key = (sample.label, sample.subset)
        if seen.get(key, 0) < limit:
            out.append(sample)
            seen[key] = seen.get(key, 0) + 1
    return out
