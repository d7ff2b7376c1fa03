"""A probe for issue 15's resolution lever, not part of `make bench`: how much of a larger
model's bin-camera gain is the simulation's scale?

    python bench/camera_scale_probe.py FOLD_DIR [--at PX] [--data DIR] [--seed N]

`crossval` scores a fold's held-out images under bin-camera conditions with the views drawn
at the model's own input size (`camera_effects.bin_camera_view(image, input_size, rng)`).
Its blur kernel (9 px) and noise (sigma 14 per pixel) are in input pixels, so at 416 px they
are milder, relative to the object, than at 288 px, and the random draws differ too (the
noise takes as many numbers as the view has pixels). This draws the views at ``--at`` pixels
(default 288, the baseline recipe's size) with the same seed as `crossval`, which gives the
very views the baseline's 288 px fold models were scored on, then resizes them to the
model's input: the same corrupted pixels for both models, but no detail above ``--at``
pixels for the larger one (a pessimistic bound, where the crossval figure is an optimistic
one). Prints both figures for the fold's model, as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.loop.service import make_policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.evaluate import evaluate_items
from bin_daemon.model.preprocess import resize
from bin_daemon.training.camera_effects import TEST_VIEWS_SEED_OFFSET, bin_camera_view
from bin_daemon.training.card_metrics import summary
from bin_daemon.training.split import read_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_dir", type=Path)
    parser.add_argument("--at", type=int, default=288, help="size the views are drawn at")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/trashnet"))
    parser.add_argument("--seed", type=int, default=20261124, help="the sweep's --seed")
    args = parser.parse_args()
    classifier = Classifier.load(args.fold_dir, num_threads=2)
    policy = make_policy(load_config(None), classifier)
    held_out = [
        (s.label, args.data / s.path)
        for s in read_split(args.fold_dir / "split.csv")
        if s.subset == "test"
    ]
    figures = {"model_input": classifier.input_size}
    for name, at in (("at_model_size", classifier.input_size), (f"at_{args.at}", args.at)):
        rng = np.random.default_rng(args.seed + TEST_VIEWS_SEED_OFFSET)

        def view(image, at=at, rng=rng):
            return resize(bin_camera_view(image, at, rng), classifier.input_size)

        run = evaluate_items(
            classifier, held_out, f"{args.fold_dir} ({name})", view=view, policy=policy
        )
        figures[name] = summary(run)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
