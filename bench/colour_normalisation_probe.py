"""A probe for issue 15, not part of `make bench`: would a global colour normalisation of the
camera frame, before the model, help under bin-camera conditions? (No training: the fold
models as they are, the frame normalised by the grey-world rule, each channel scaled so that
its mean is the mean of the three, the cheapest automatic white balance there is.)

    python bench/colour_normalisation_probe.py SWEEP_DIR [--data DIR] [--out FILE]

For each fold of a `crossval` sweep it scores the held-out images, clean and under the very
bin-camera views the sweep's report scored (its recorded seed, drawn at 288 px, in split
order), once as they are and once grey-world normalised, by the daemon's classifier (top-1
label). It stops if the figures as they are differ from the report's (then these are not the
images and views the report scored).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.preprocess import load_image
from bin_daemon.training.card_metrics import _camera_view
from bin_daemon.training.crossval import CAMERA_VIEWS_AT, load_report
from bin_daemon.training.split import read_split


def grey_world(image: np.ndarray) -> np.ndarray:
    """Each channel scaled so that its mean is the mean of the three channels' means."""
    pixels = image.astype(np.float32)
    means = pixels.reshape(-1, 3).mean(axis=0) + 1e-3
    return np.clip(pixels * (means.mean() / means), 0, 255).astype(np.uint8)


def fold_figures(fold_dir: Path, data: Path, view_seed: int) -> dict[str, float]:
    classifier = Classifier.load(fold_dir, num_threads=2)
    tests = [s for s in read_split(fold_dir / "split.csv") if s.subset == "test"]
    view = _camera_view(CAMERA_VIEWS_AT, view_seed)
    right = {"clean": 0, "clean_grey_world": 0, "camera": 0, "camera_grey_world": 0}
    for sample in tests:
        image = load_image(data / sample.path)
        camera = view(image)
        for name, frame in (("clean", image), ("camera", camera)):
            right[name] += classifier.classify(frame).label == sample.label
            right[f"{name}_grey_world"] += classifier.classify(grey_world(frame)).label == (
                sample.label
            )
    return {name: round(count / len(tests), 4) for name, count in right.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/trashnet"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        return probe(args.sweep, args.data, args.out)
    except BinDaemonError as error:  # no report, no fold model, an unreadable image: one line
        raise SystemExit(f"colour_normalisation_probe: {error}") from None


def probe(sweep: Path, data: Path, out: Path | None) -> int:
    report = load_report(sweep)
    seed = int(report["camera_views"]["seed"])
    folds = {}
    for recorded in report["per_fold"]:
        fold = recorded["fold"]
        figures = fold_figures(sweep / f"fold-{fold}", data, seed)
        for ours, theirs in (("clean", "accuracy"), ("camera", "camera_accuracy")):
            if abs(figures[ours] - recorded[theirs]) > 1e-4:
                raise SystemExit(
                    f"fold {fold}: {ours} {figures[ours]} is not the report's {recorded[theirs]}"
                )
        folds[fold] = figures
        print(fold, figures, flush=True)
    gains = {
        kind: [100 * (f[f"{kind}_grey_world"] - f[kind]) for f in folds.values()]
        for kind in ("clean", "camera")
    }
    summary = {
        "sweep": str(sweep),
        "per_fold": folds,
        **{
            f"{kind}_gain_points": {
                "mean": round(float(np.mean(g)), 2),
                "sd": round(float(np.std(g, ddof=1)), 2) if len(g) > 1 else None,
                "per_fold": [round(x, 2) for x in g],
            }
            for kind, g in gains.items()
        },
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_fold"}, indent=1))
    if out:
        out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
