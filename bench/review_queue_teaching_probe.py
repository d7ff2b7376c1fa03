"""Teaching the site head from the review queue instead of from random frames.

SITE.md's curves teach frames drawn at random from a site's items. On a real bin most taught
frames come from the console's review page, which lists the items the model was unsure about
(and a person who spots a wrong bin corrects that item). Those are the hard items, not typical
ones. This probe teaches the shipped head (``SiteHead.fit``) the same number of frames a
label, chosen three ways from each draw's teaching half, and scores the scoring half:

* ``random``: as SITE.md (up to k a label, at random);
* ``unsure``: only items below the unsure threshold, with their true labels (up to k a label);
* ``wrong``: only items the model got wrong, with their true labels (up to k a label).

The five fold models' cached embeddings (``runs/site_cache/<sha>/``, from ``site_experiments
--model-dir FOLD``), SITE.md's halves and 10 draws a fold; gains are paired with the model
alone on the same scoring half, mean over folds.

    python bench/review_queue_teaching_probe.py runs/cv/lite2-288-hv08 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.training import site_methods as M
from bin_daemon.training.site_experiments import (
    CACHE,
    THRESHOLD,
    fit_site_head,
    halves,
    read_last_layer,
    scores,
)
from bin_daemon.training.split import sha256_file

SHOTS = (1, 3, 5, 10, 20)
DRAWS = 10
SEED = 20261205
SELECTIONS = ("random", "unsure", "wrong")


def choose(
    y: np.ndarray, pool: np.ndarray, eligible: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``k`` eligible items of each label from ``pool``."""
    out: list[int] = []
    for c in np.unique(y):
        members = pool[(y[pool] == c) & eligible[pool]]
        out.extend(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.array(out, dtype=int)


def probe_fold(fold: Path) -> dict:
    model = fold / "waste_classifier.tflite"
    cache = CACHE / sha256_file(model)[:12]
    labels = (fold / "labels.txt").read_text().split()
    index = {label: i for i, label in enumerate(labels)}
    train = np.load(cache / "train_clean.npz")["embeddings"].astype(np.float64)
    W0, b0 = read_last_layer(model, len(labels), train.shape[1])
    ctx = M.Context(W0, b0, labels, train.mean(axis=0), train.std(axis=0))
    out: dict = {}
    for copy in ("site", "camera"):
        d = np.load(cache / f"test_{copy}.npz")
        E = d["embeddings"].astype(np.float64)
        y = np.array([index[v] for v in d["labels"]])
        probs = M.softmax(E @ W0.T + b0)
        eligible = {
            "random": np.ones(len(y), bool),
            "unsure": probs.max(axis=1) < THRESHOLD,
            "wrong": probs.argmax(axis=1) != y,
        }
        for shots in SHOTS:
            rows: dict[str, list[tuple[float, int]]] = {s: [] for s in SELECTIONS}
            for draw in range(DRAWS):
                rng = np.random.default_rng(SEED + 1000 * draw + shots)
                teach, score = halves(y, rng)
                base = scores(probs[score], y[score])["accuracy"]
                for selection in SELECTIONS:
                    taught = choose(y, teach, eligible[selection], shots, rng)
                    if len(taught) == 0:
                        rows[selection].append((0.0, 0))
                        continue
                    predict = fit_site_head(ctx, E[taught], y[taught], model)
                    acc = scores(predict(E[score]), y[score])["accuracy"]
                    rows[selection].append((acc - base, len(taught)))
            out[f"{copy}/{shots}"] = {
                s: {
                    "gain": float(np.mean([g for g, _ in rows[s]])),
                    "taught": float(np.mean([n for _, n in rows[s]])),
                }
                for s in SELECTIONS
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folds = sorted(args.cv_dir.glob("fold-*"))
    per_fold = [probe_fold(f) for f in folds]
    summary: dict = {}
    for key in per_fold[0]:
        summary[key] = {}
        for s in SELECTIONS:
            gains = np.array([p[key][s]["gain"] for p in per_fold])
            taught = np.array([p[key][s]["taught"] for p in per_fold])
            versus = gains - np.array([p[key]["random"]["gain"] for p in per_fold])
            summary[key][s] = {
                "gain_points": {
                    "mean": round(100 * float(gains.mean()), 2),
                    "sd": round(100 * float(gains.std(ddof=1)), 2),
                },
                "minus_random_points": {
                    "mean": round(100 * float(versus.mean()), 2),
                    "sd": round(100 * float(versus.std(ddof=1)), 2),
                },
                "frames_taught": round(float(taught.mean()), 1),
            }
    print("gain over the model, points (frames taught) [minus random's, paired by fold]")
    print(f"{'copy/frames a label':22s}" + "".join(f"{s:>28s}" for s in SELECTIONS))
    for key, row in summary.items():
        cells = [
            f"{row[s]['gain_points']['mean']:+.1f} ± {row[s]['gain_points']['sd']:.1f} "
            f"({row[s]['frames_taught']:.0f})"
            + ("" if s == "random" else f" [{row[s]['minus_random_points']['mean']:+.1f}]")
            for s in SELECTIONS
        ]
        print(f"{key:22s}" + "".join(f"{c:>28s}" for c in cells))
    if args.out:
        record = {"folds": [str(f) for f in folds], "draws": DRAWS, "summary": summary}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
