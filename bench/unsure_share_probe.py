"""How often the model is unsure when the camera is fine, and when it is not.

A bin's only live sign that its pictures got worse without any device failing (a smudged or
fogged lens, a lamp gone, a camera knocked sideways) is the model's confidence. This probe
measures the share of items below the unsure threshold on the five fold models' held-out
images, as they are (``clean``), under SITE.md's two camera copies (cached: ``site``, one
consistent site; ``camera``, random bin-camera conditions), and under three faults made here:

* ``smudged``: a greasy or fogged lens, Gaussian blur of sigma 6 px (at 512 x 384) and a
  40% veil of the frame's mean colour;
* ``dark``: the light gone, exposure x0.15 with sensor noise (sigma 6);
* ``knocked``: the camera turned away, the square crop moved to a corner of the frame at
  half its area, so that the item is half out of view.

Each held-out image is scored once per condition by its own fold model, through the calibrated
last layer (``read_last_layer``), against the threshold 0.85 of SITE.md. Prints the unsure
share and accuracy per condition, mean over folds.

    python bench/unsure_share_probe.py runs/cv/lite2-288-hv08 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.model.preprocess import gaussian_blur_sigma, load_image, to_model_input
from bin_daemon.training import site_methods as M
from bin_daemon.training.site_experiments import CACHE, DATA, THRESHOLD, read_last_layer
from bin_daemon.training.site_views import Embedder
from bin_daemon.training.split import read_split, sha256_file

SEED = 20261205
CACHED = ("clean", "camera", "site")
FAULTS = ("smudged", "dark", "knocked")


def smudged(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = gaussian_blur_sigma(image, 6.0).astype(np.float32)
    veil = out.reshape(-1, 3).mean(axis=0)
    return np.clip(0.6 * out + 0.4 * veil, 0, 255).astype(np.uint8)


def dark(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32) * 0.15 + rng.normal(0.0, 6.0, image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def knocked(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    side = int(min(h, w) * np.sqrt(0.5))
    corner = rng.integers(4)
    y = 0 if corner < 2 else h - side
    x = 0 if corner % 2 == 0 else w - side
    return image[y : y + side, x : x + side]


def probe_fold(fold: Path) -> dict:
    model = fold / "waste_classifier.tflite"
    labels = (fold / "labels.txt").read_text().split()
    index = {label: i for i, label in enumerate(labels)}
    cache = CACHE / sha256_file(model)[:12]
    W0, b0 = read_last_layer(model, len(labels), 1280)
    out: dict = {}

    def record(name: str, E: np.ndarray, y: np.ndarray) -> None:
        p = M.softmax(E.astype(np.float64) @ W0.T + b0)
        out[name] = {
            "unsure_share": float(np.mean(p.max(axis=1) < THRESHOLD)),
            "accuracy": float(np.mean(p.argmax(axis=1) == y)),
        }

    for copy in CACHED:
        d = np.load(cache / f"test_{copy}.npz")
        record(copy, d["embeddings"], np.array([index[v] for v in d["labels"]]))
    samples = [s for s in read_split(fold / "split.csv") if s.subset == "test"]
    y = np.array([index[s.label] for s in samples])
    embedder = Embedder(model, threads=2)
    images = [load_image(DATA / s.path) for s in samples]
    for name, fault in zip(FAULTS, (smudged, dark, knocked), strict=True):
        rng = np.random.default_rng(SEED)
        E = np.stack([embedder(to_model_input(fault(im, rng), embedder.size))[0] for im in images])
        record(name, E, y)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folds = sorted(args.cv_dir.glob("fold-*"))
    per_fold = [probe_fold(f) for f in folds]
    summary = {}
    print(f"{'condition':10s} {'unsure share':>16s} {'accuracy':>16s}")
    for name in (*CACHED, *FAULTS):
        row = {}
        for key in ("unsure_share", "accuracy"):
            v = np.array([p[name][key] for p in per_fold])
            row[key] = {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4)}
        summary[name] = row
        print(
            f"{name:10s} {100 * row['unsure_share']['mean']:9.1f} ± {100 * row['unsure_share']['sd']:3.1f}"
            f" {100 * row['accuracy']['mean']:9.1f} ± {100 * row['accuracy']['sd']:3.1f}"
        )
    if args.out:
        record = {"folds": [str(f) for f in folds], "threshold": THRESHOLD, "summary": summary}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
