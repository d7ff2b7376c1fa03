"""A probe for issue 15's resolution lever, not part of `make bench`: how much of a larger
model's bin-camera gain is the simulation's scale?

    python bench/camera_scale_probe.py FOLD_DIR [--at PX] [--data DIR]

`crossval` scores a fold's held-out images under bin-camera conditions with the views drawn
at the model's own input size (`camera_effects.bin_camera_view(image, input_size, rng)`).
Its blur kernel (9 px) and noise (sigma 14 per pixel) are in input pixels, so at 416 px they
are milder, relative to the object, than at 288 px, and the random draws differ too (the
noise takes as many numbers as the view has pixels). This draws the views at ``--at`` pixels
(default 288, the baseline recipe's size) with the same seed as `crossval` (the fold's own
training seed, from its record), which gives the
very views the baseline's 288 px fold models were scored on, then resizes them to the
model's input: the same corrupted pixels for both models, but no detail above ``--at``
pixels for the larger one (a pessimistic bound, where the crossval figure is an optimistic
one). Prints both figures for the fold's model, as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bin_daemon.config import load_config
from bin_daemon.errors import BinDaemonError
from bin_daemon.loop.service import make_policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.evaluate import evaluate_items
from bin_daemon.model.preprocess import resize
from bin_daemon.training.camera_effects import TEST_VIEWS_SEED_OFFSET
from bin_daemon.training.card_metrics import _camera_view, summary
from bin_daemon.training.split import read_split


def probe(fold_dir: Path, at: int, data: Path) -> dict:
    classifier = Classifier.load(fold_dir, num_threads=2)
    policy = make_policy(load_config(None), classifier)
    seed = json.loads((fold_dir / "training_results.json").read_text())["training"]["seed"]
    held_out = [
        (s.label, data / s.path) for s in read_split(fold_dir / "split.csv") if s.subset == "test"
    ]
    figures = {"model_input": classifier.input_size}
    for name, size in (("at_model_size", classifier.input_size), (f"at_{at}", at)):
        drawn = _camera_view(size, seed + TEST_VIEWS_SEED_OFFSET)

        def view(image, drawn=drawn):
            return resize(drawn(image), classifier.input_size)

        run = evaluate_items(classifier, held_out, f"{fold_dir} ({name})", view=view, policy=policy)
        figures[name] = summary(run)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_dir", type=Path)
    parser.add_argument("--at", type=int, default=288, help="size the views are drawn at")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/trashnet"))
    args = parser.parse_args()
    try:
        figures = probe(args.fold_dir, args.at, args.data)
    except (BinDaemonError, OSError, KeyError) as error:
        print(f"camera_scale_probe: {args.fold_dir}: not a finished fold model ({error})")
        return 2
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
