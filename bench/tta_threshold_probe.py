"""An experiment for issue 15, not part of `make bench`: more test-time views, and the unsure
threshold judged at bin level.

    python bench/tta_threshold_probe.py [--model-dir models] [--data DIR] [--cache FILE]

Classifies every val and test image of the model's split, clean and as the bin-camera views
training and `card_metrics` draw (same seeds), in the 8 orientations of the square (4
quarter turns, each also mirrored; training sees all 8 through its augmentation), by the
daemon's own one-invoke path. Then prints, with the project's own bin metrics under the
default bins:

1. per TTA ensemble (none, flip, 4 turns, all 8): items it gets right that the plain model gets
   wrong, and the reverse, per split and view;
2. per unsure threshold: F, foreign items in the recycling bins, and L, recyclables sent to the
   fallback bin, over val and test (clean + bin-camera views), and the break-even cost ratio
   against no threshold (how many lost recyclables one avoided foreign item must be worth);
3. the threshold chosen on val by the least ``L + r * F``, scored on test, for a few ``r``.

About 4 minutes on 2 busy cores; ``--cache`` keeps the probabilities for a second look.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENSEMBLES = {"none": [0], "flip": [0, 1], "turns": [0, 2, 4, 6], "all 8": list(range(8))}
VIEWS = ("clean", "bin_camera")
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)


def probabilities(model_dir: Path, data: Path) -> dict[str, np.ndarray]:
    """``{subset_view: (n, 8, labels) probabilities, subset_view_truth: (n,) label indices}``."""
    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.preprocess import load_image
    from bin_daemon.training.camera_effects import bin_camera_view
    from bin_daemon.training.card_metrics import SEED_OFFSETS, _items
    from bin_daemon.training.split import read_split

    card = json.loads((model_dir / "model_card.json").read_text())
    split, seed = read_split(model_dir / "split.csv"), int(card["dataset"]["split_seed"])
    classifier = Classifier.load(model_dir, num_threads=2)
    out: dict[str, np.ndarray] = {"labels": np.array(classifier.labels)}
    for subset in ("val", "test"):
        items = _items(data, split, subset)
        for view in VIEWS:
            rng = np.random.default_rng(seed + SEED_OFFSETS[subset])
            probs = np.zeros((len(items), 8, len(classifier.labels)))
            for i, (_, path) in enumerate(items):
                image = load_image(path)
                if view == "bin_camera":
                    image = bin_camera_view(image, classifier.input_size, rng)
                for k in range(4):
                    turned = np.rot90(image, k)
                    probs[i, 2 * k] = classifier.classify_once(turned).scores
                    probs[i, 2 * k + 1] = classifier.classify_once(turned[:, ::-1]).scores
            out[f"{subset}_{view}"] = probs
            out[f"{subset}_{view}_truth"] = np.array(
                [classifier.labels.index(label) for label, _ in items]
            )
            print(f"[probe] {subset} {view}: {len(items)} images", file=sys.stderr, flush=True)
    return out


def report(z: dict[str, np.ndarray]) -> None:
    from bin_daemon.config import load_config
    from bin_daemon.loop.policy import Policy
    from bin_daemon.model.evaluate import bin_metrics

    labels = [str(x) for x in z["labels"]]
    config = load_config(None)

    def predict(key: str, ensemble: str) -> tuple[np.ndarray, np.ndarray]:
        p = z[key][:, ENSEMBLES[ensemble]].mean(axis=1)
        return p.argmax(1), p.max(1)

    def errors(split: str, ensemble: str, threshold: float) -> tuple[int, int]:
        """(F, L) over the split's clean and bin-camera views."""
        foreign = lost = 0
        for view in VIEWS:
            key = f"{split}_{view}"
            index, confidence = predict(key, ensemble)
            policy = Policy(config.bin_for_label(), config.fallback_bin, threshold)
            m = bin_metrics(
                policy,
                [labels[i] for i in z[key + "_truth"]],
                [labels[i] for i in index],
                confidence.tolist(),
            ).decided
            fallback = m.bins.index(m.fallback_bin)
            recycling = [i for i in range(len(m.bins)) if i != fallback]
            foreign += m.recycling_contamination.foreign
            lost += int(m.confusion[recycling, fallback].sum())
        return foreign, lost

    print("1. right only with the ensemble / only without it")
    for ensemble in list(ENSEMBLES)[1:]:
        cells = []
        for split in ("val", "test"):
            for view in VIEWS:
                key, truth = f"{split}_{view}", z[f"{split}_{view}_truth"]
                plain = predict(key, "none")[0] == truth
                other = predict(key, ensemble)[0] == truth
                cells.append(f"{key} +{int((other & ~plain).sum())}/-{int((plain & ~other).sum())}")
        print(f"   {ensemble:6s} " + "  ".join(cells))
    print("2. F (foreign in recycling bins) and L (recyclables to the fallback bin) per threshold")
    for ensemble in ("none", "flip"):
        for split in ("val", "test"):
            f0, l0 = errors(split, ensemble, 0.0)
            cells = []
            for t in THRESHOLDS:
                f, lo = errors(split, ensemble, t)
                even = f" (break-even {(lo - l0) / (f0 - f):.1f})" if f0 > f else ""
                cells.append(f"t={t:.2f} F {f} L {lo}{even}")
            print(f"   {ensemble} {split}: " + "; ".join(cells))
    print("3. threshold chosen on val by the least L + r*F, then on test (vs 0.85)")
    grid = [round(float(t), 2) for t in np.arange(0, 1.0, 0.01)]
    for ensemble in ("none", "flip"):
        for r in (1, 3, 5, 10, 20):
            cost = {t: errors("val", ensemble, t) for t in grid}
            best = min(grid, key=lambda t: (cost[t][1] + r * cost[t][0], -t))
            (ft, lt), (f85, l85) = errors("test", ensemble, best), errors("test", ensemble, 0.85)
            print(
                f"   {ensemble} r={r:2d}: t={best:.2f} val F {cost[best][0]} L {cost[best][1]}; "
                f"test F {ft} L {lt} cost {lt + r * ft} (0.85: F {f85} L {l85} cost {l85 + r * f85})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/trashnet")
    parser.add_argument("--cache", type=Path, help="an .npz to read, or to write if missing")
    args = parser.parse_args()
    if args.cache is not None and args.cache.is_file():
        z = dict(np.load(args.cache))
    else:
        z = probabilities(args.model_dir, args.data)
        if args.cache is not None:
            np.savez(args.cache, **z)
    report(z)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
