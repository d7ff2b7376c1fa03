"""A probe for issue 15, not part of `make bench`: does a memory of the training pool help
the classifier? (k nearest training images by the model's own embedding, their labels fused
with the model's probabilities: the site experiments' `knn_fused_with_model`, docs/SITE.md,
with the pool's images as the taught examples.)

    python bench/pool_memory_probe.py FOLD_DIR... [--site-head] [--data DIR] [--cache DIR]
        [--out FILE]

For each cross-validation fold model (a `crossval` fold folder, whose int8 model has the
embedding output) it runs the daemon's classifier once over every image of the fold's split
and keeps probabilities and embeddings (cached in ``--cache``, per model file):

- the memory: the fold's training images (its ``train`` and ``val`` parts), clean, and one
  bin-camera view of each (drawn from their own seed);
- the held-out fold (``test``), clean and under the very bin-camera views `crossval` scored
  (the seed its report records, drawn at 288 px, in split order).

The fusion's two settings, k and the weight of the neighbours' vote, are chosen on the
fold's ``val`` part as queries against its ``train`` part only; the held-out fold is then
scored once with the chosen settings against the whole memory (train and val). With
``--site-head`` the same memory is also taught to the site head instead (`SiteHead.fit`: the
model's own last layer refitted on those embeddings, docs/SITE.md) and the held-out fold
scored through it. The model's own figures (no memory) are printed beside each; the probe
stops if they are not the `crossval` report's (then these are not the views and images that
report scored).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.model.classifier import Classifier, sha256_file
from bin_daemon.model.preprocess import load_image, resize
from bin_daemon.site.head import SiteHead
from bin_daemon.training.card_metrics import _camera_view
from bin_daemon.training.crossval import CAMERA_VIEWS_AT
from bin_daemon.training.site_methods import unit
from bin_daemon.training.split import read_split
from bin_daemon.training.train import MODEL_FILE

MEMORY_VIEWS_SEED = 424242  # the memory's own bin-camera views: not the test views' seed
KS = (1, 3, 5, 10, 20)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def _run(classifier: Classifier, images, view=None) -> tuple[np.ndarray, np.ndarray]:
    probs, embeddings = [], []
    for path in images:
        image = load_image(path)
        if view is not None:
            image = view(image)
        prediction = classifier.classify_once(image)
        assert prediction.embedding is not None, "the fold model has no embedding output"
        probs.append(np.asarray(prediction.scores, np.float32))
        embeddings.append(prediction.embedding)
    return np.stack(probs), np.stack(embeddings)


def embed_fold(fold_dir: Path, data: Path, cache: Path, test_views_seed: int) -> dict:
    model_hash = sha256_file(fold_dir / MODEL_FILE)[:12]
    cached = cache / f"{fold_dir.parent.name}-{fold_dir.name}-{model_hash}.npz"
    if cached.exists():
        return dict(np.load(cached))
    classifier = Classifier.load(fold_dir, num_threads=1)
    labels = list(classifier.labels)
    split = read_split(fold_dir / "split.csv")
    out: dict[str, np.ndarray] = {}
    for part in ("train", "val", "test"):
        samples = [s for s in split if s.subset == part]
        paths = [data / s.path for s in samples]
        out[f"{part}_y"] = np.array([labels.index(s.label) for s in samples], np.int16)
        out[f"{part}_p"], out[f"{part}_e"] = _run(classifier, paths)
        seed = test_views_seed if part == "test" else MEMORY_VIEWS_SEED
        drawn = _camera_view(CAMERA_VIEWS_AT, seed)

        def view(image, drawn=drawn):
            return resize(drawn(image), classifier.input_size)

        out[f"{part}_cam_p"], out[f"{part}_cam_e"] = _run(classifier, paths, view)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cached, **out)
    return out


def fused(
    probs: np.ndarray,
    queries: np.ndarray,
    memory: np.ndarray,
    memory_y: np.ndarray,
    k: int,
    weight: float,
    n_classes: int,
) -> np.ndarray:
    """log p_model + weight * log q_neighbours (q: the k nearest's label shares, smoothed)."""
    sims = unit(queries) @ unit(memory).T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(queries), n_classes))
    for j in range(k):
        np.add.at(votes, (np.arange(len(queries)), memory_y[nearest[:, j]]), 1.0)
    q = (votes + 0.5) / (k + 0.5 * n_classes)
    return np.log(np.maximum(probs, 1e-9)) + weight * np.log(q)


def _accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == y).mean())


def probe_fold(f: dict[str, np.ndarray], with_camera_memory: bool) -> dict:
    n = f["train_p"].shape[1]

    def memory(parts):
        e = [f[f"{p}_e"] for p in parts]
        y = [f[f"{p}_y"] for p in parts]
        if with_camera_memory:
            e += [f[f"{p}_cam_e"] for p in parts]
            y += [f[f"{p}_y"] for p in parts]
        return np.concatenate(e), np.concatenate(y)

    train_e, train_y = memory(("train",))
    # choose (k, weight) on val (clean and bin-camera views averaged) against train only
    grid = {}
    for k in KS:
        for w in WEIGHTS:
            grid[(k, w)] = np.mean(
                [
                    _accuracy(
                        fused(f[f"val{c}_p"], f[f"val{c}_e"], train_e, train_y, k, w, n), f["val_y"]
                    )
                    for c in ("", "_cam")
                ]
            )
    best = max(grid, key=lambda kw: (round(grid[kw], 6), -kw[1]))  # ties: the lighter weight
    all_e, all_y = memory(("train", "val"))
    figures = {
        "chosen_k": best[0],
        "chosen_weight": best[1],
        "val_mean": grid[best],
        "val_without": grid[(KS[0], 0.0)],
    }
    for c, name in (("", "clean"), ("_cam", "camera")):
        p, e, y = f[f"test{c}_p"], f[f"test{c}_e"], f["test_y"]
        figures[f"{name}_model"] = _accuracy(p, y)
        figures[f"{name}_memory"] = _accuracy(fused(p, e, all_e, all_y, *best, n), y)
        figures[f"{name}_grid"] = {  # every setting, for the record (not chosen on these)
            f"k{k}_w{w}": round(_accuracy(fused(p, e, all_e, all_y, k, w, n), y), 4)
            for k in KS
            for w in WEIGHTS[1:]
        }
    return figures


def probe_site_head(fold_dir: Path, f: dict[str, np.ndarray], with_camera_memory: bool) -> dict:
    labels = list(Classifier.load(fold_dir, num_threads=1).labels)
    views = ("", "_cam") if with_camera_memory else ("",)
    E = np.concatenate([f[f"{p}{c}_e"] for c in views for p in ("train", "val")])
    y = np.concatenate([f[f"{p}_y"] for c in views for p in ("train", "val")])
    head = SiteHead.fit(
        E, [labels[i] for i in y], model_labels=labels, model_path=fold_dir / MODEL_FILE
    )
    figures = {}
    for c, name in (("", "clean"), ("_cam", "camera")):
        p, e = f[f"test{c}_p"], f[f"test{c}_e"]
        head_probs = np.stack([head.apply(x, q).probs for x, q in zip(e, p, strict=True)])
        figures[f"{name}_model"] = _accuracy(p, f["test_y"])
        figures[f"{name}_memory"] = _accuracy(head_probs, f["test_y"])
    return figures


def _check_against_crossval(fold_dir: Path, recorded: dict, f: dict[str, np.ndarray]) -> None:
    fold = int(fold_dir.name.split("-")[-1])
    row = next(r for r in recorded["per_fold"] if r["fold"] == fold)
    for key, part in (("accuracy", "test"), ("camera_accuracy", "test_cam")):
        measured = round(_accuracy(f[f"{part}_p"], f["test_y"]), 4)
        if measured != row[key]:
            raise SystemExit(f"{fold_dir}: {key} {measured} here, {row[key]} in its crossval.json")


def probe(fold_dir: Path, args: argparse.Namespace) -> dict:
    """One fold's figures (printed as they come)."""
    recorded = json.loads((fold_dir.parent / "crossval.json").read_text())
    f = embed_fold(fold_dir, args.data, args.cache, recorded["camera_views"]["seed"])
    _check_against_crossval(fold_dir, recorded, f)
    figures = {
        "clean memory": probe_fold(f, with_camera_memory=False),
        "clean and bin-camera memory": probe_fold(f, with_camera_memory=True),
    }
    if args.site_head:
        for camera, variant in ((False, "clean"), (True, "clean and bin-camera")):
            figures[f"site head taught the {variant} memory"] = probe_site_head(
                fold_dir, f, with_camera_memory=camera
            )
    for variant, fig in figures.items():
        chosen = f"k={fig['chosen_k']} w={fig['chosen_weight']}" if "chosen_k" in fig else ""
        print(
            f"{fold_dir} [{variant}]: {chosen} | clean "
            f"{fig['clean_model']:.4f} -> {fig['clean_memory']:.4f} | camera "
            f"{fig['camera_model']:.4f} -> {fig['camera_memory']:.4f}",
            flush=True,
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_dirs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/trashnet"))
    parser.add_argument("--cache", type=Path, default=Path("runs/probe/pool_memory"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--site-head", action="store_true", help="also teach the site head")
    args = parser.parse_args()
    report = {}
    for fold_dir in args.fold_dirs:
        try:
            report[str(fold_dir)] = probe(fold_dir, args)
        except (OSError, KeyError, ValueError, StopIteration) as error:
            print(f"pool_memory_probe: {fold_dir}: not a finished crossval fold ({error!r})")
            return 2
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
