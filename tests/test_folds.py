"""Cross-validation folds (numpy/stdlib only): stratified, disjoint, covering, seeded."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import pytest

from bin_daemon.training.folds import fold_split, folds_hash, stratified_kfold, write_folds
from bin_daemon.training.split import Sample, scan_dataset

SAMPLES = Path(__file__).parent / "data" / "samples"
# TrashNet's class sizes: unbalanced, trash the smallest
COUNTS = {"cardboard": 403, "glass": 501, "metal": 410, "paper": 594, "plastic": 482, "trash": 137}


def _pool() -> list[Sample]:
    return [
        Sample(f"{label}/{label}{i}.jpg", label, f"{len(label) * 1000 + i:064x}")
        for label, n in COUNTS.items()
        for i in range(n)
    ]


def test_folds_are_stratified_disjoint_and_cover_the_pool():
    pool = _pool()
    folds = stratified_kfold(pool, 5, seed=20261124)
    assert set(folds) == {s.path for s in pool}  # every image in exactly one fold (a dict)
    assert set(folds.values()) == set(range(5))
    sizes = collections.Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for label, n in COUNTS.items():
        per_fold = collections.Counter(folds[s.path] for s in pool if s.label == label)
        assert sum(per_fold.values()) == n
        assert max(per_fold.values()) - min(per_fold.values()) <= 1, (label, per_fold)


def test_folds_are_seeded():
    pool = _pool()
    assert stratified_kfold(pool, 5, 1) == stratified_kfold(list(reversed(pool)), 5, 1)
    assert stratified_kfold(pool, 5, 1) != stratified_kfold(pool, 5, 2)
    assert folds_hash(pool, stratified_kfold(pool, 5, 1)) != folds_hash(
        pool, stratified_kfold(pool, 5, 2)
    )


def test_a_fold_holds_out_its_images_and_splits_the_rest_per_class():
    pool = _pool()
    folds = stratified_kfold(pool, 5, seed=3)
    held_out_anywhere = collections.Counter()
    for fold in range(5):
        split = fold_split(pool, folds, fold, seed=3)
        assert sorted(s.path for s in split) == sorted(s.path for s in pool)
        test = {s.path for s in split if s.subset == "test"}
        assert test == {p for p, f in folds.items() if f == fold}
        held_out_anywhere.update(test)
        for label, _n in COUNTS.items():
            rest = [s for s in split if s.label == label and s.subset != "test"]
            val = [s for s in rest if s.subset == "val"]
            assert len(val) == max(1, round(len(rest) * 0.15))
            assert {s.subset for s in rest} == {"train", "val"}
        assert fold_split(pool, folds, fold, seed=3) == split
    assert set(held_out_anywhere.values()) == {1}  # each image held out exactly once


def test_too_few_images_for_the_folds_is_one_clear_error():
    pool = [s for s in _pool() if s.label != "trash"] + [
        Sample("trash/a.jpg", "trash", "0" * 64),
        Sample("trash/b.jpg", "trash", "1" * 64),
    ]
    with pytest.raises(ValueError, match="'trash' has 2 images; 5 folds need 5"):
        stratified_kfold(pool, 5, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        stratified_kfold(pool, 1, seed=1)


def test_folds_file_names_every_image_with_its_hash_and_fold(tmp_path):
    samples = scan_dataset(SAMPLES)
    folds = stratified_kfold(samples, 2, seed=5)
    write_folds(samples, folds, tmp_path / "folds.csv")
    with (tmp_path / "folds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {r["fold"] for r in rows} == {"1", "2"}
    assert all(r["sha256"] == s.sha256 for r, s in zip(rows, samples, strict=True))
