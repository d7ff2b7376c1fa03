"""Re-centring on the items a bin has seen, with no labels: does it survive a site's class mix?

SITE.md measured ``align_unlabelled`` (every site item's embedding moved by the training mean
minus the site mean, clipped at zero, then the model's own last layer) at +1.1 points on the
simulated site copy with the shipped recipe, but only on test splits whose class mix is the
training pool's. A real bin sees its own mix (a cafe: cups and paper; a workshop: metal), and
a plain mean of such a stream moves towards its common classes, which re-centring would then
subtract. This probe scores, on the five fold models' cached embeddings
(``site_experiments --model-dir FOLD`` must have run: ``runs/site_cache/<sha>/``):

* ``plain``: the stream's plain mean against the training split's plain mean (SITE.md's row);
* ``balanced``: the mean of the stream's per-label means, labels being the model's own
  predictions (pseudo-labels, no person involved), against the training split's class-balanced
  mean; labels predicted fewer than ``MIN_PER_LABEL`` times are left out on both sides;
* ``balanced_true``: the same with the true labels, an upper reference (a person labelled all).

Streams: ``n`` items drawn with replacement from a fold's held-out items, with class shares as
in the pool (``pool``), drawn from a flat Dirichlet (``dirichlet``), or one class at 60%
(``one_60``). Accuracy is on the stream itself, against the model alone on the same items.

    python bench/unlabelled_recentre_probe.py runs/cv/lite2-288-hv08 [--draws 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.training.site_experiments import CACHE, read_last_layer
from bin_daemon.training.split import sha256_file

MIN_PER_LABEL = 3
COPIES = ("clean", "site", "camera")
MIXES = ("pool", "dirichlet", "one_60")
SIZES = (50, 200)


def load_fold(fold: Path) -> dict:
    cache = CACHE / sha256_file(fold / "waste_classifier.tflite")[:12]
    labels = (fold / "labels.txt").read_text().split()
    out = {"labels": labels}
    for name in ("train_clean", *(f"test_{c}" for c in COPIES)):
        d = np.load(cache / f"{name}.npz")
        index = {label: i for i, label in enumerate(labels)}
        out[name] = (d["embeddings"].astype(np.float64), np.array([index[v] for v in d["labels"]]))
    W0, b0 = read_last_layer(fold / "waste_classifier.tflite", len(labels), 1280)
    out["W0"], out["b0"] = W0, b0
    return out


def balanced_mean(E: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.stack([E[y == c].mean(axis=0) for c in np.flatnonzero(keep)]).mean(axis=0)


def stream(y: np.ndarray, K: int, mix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if mix == "pool":
        shares = np.bincount(y, minlength=K) / len(y)
    elif mix == "dirichlet":
        shares = rng.dirichlet(np.ones(K))
    else:
        shares = np.full(K, 0.4 / (K - 1))
        shares[rng.integers(K)] = 0.6
    classes = rng.choice(K, size=n, p=shares)
    return np.array([rng.choice(np.flatnonzero(y == c)) for c in classes])


def probe(fold: dict, draws: int, seed: int) -> dict:
    W0, b0 = fold["W0"], fold["b0"]
    K = len(fold["labels"])
    Et, yt = fold["train_clean"]
    mu_plain = Et.mean(axis=0)

    def predict(X: np.ndarray) -> np.ndarray:
        return np.argmax(X @ W0.T + b0, axis=1)

    rng = np.random.default_rng(seed)
    out: dict = {}
    for copy in COPIES:
        E, y = fold[f"test_{copy}"]
        for mix in MIXES:
            for n in SIZES:
                gains: dict[str, list[float]] = {"plain": [], "balanced": [], "balanced_true": []}
                base = []
                for _ in range(draws):
                    idx = stream(y, K, mix, n, rng)
                    X, truth = E[idx], y[idx]
                    own = predict(X)
                    base.append(float(np.mean(own == truth)))
                    shifted = {"plain": X - X.mean(axis=0) + mu_plain}
                    for name, labels in (("balanced", own), ("balanced_true", truth)):
                        counts = np.bincount(labels, minlength=K)
                        keep = counts >= MIN_PER_LABEL
                        mu_s = balanced_mean(X, labels, keep)
                        mu_t = balanced_mean(Et, yt, keep)
                        shifted[name] = X - mu_s + mu_t
                    for name, Xs in shifted.items():
                        acc = float(np.mean(predict(np.maximum(Xs, 0.0)) == truth))
                        gains[name].append(acc - base[-1])
                out[f"{copy}/{mix}/{n}"] = {
                    "model": float(np.mean(base)),
                    **{k: float(np.mean(v)) for k, v in gains.items()},
                    **{f"{k}_worst": float(np.min(v)) for k, v in gains.items()},
                }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folds = sorted(args.cv_dir.glob("fold-*"))
    per_fold = [probe(load_fold(f), args.draws, seed=i) for i, f in enumerate(folds)]
    summary = {}
    for key in per_fold[0]:
        row = {}
        for k in per_fold[0][key]:
            v = np.array([p[key][k] for p in per_fold])
            row[k] = {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4)}
        summary[key] = row
    print(f"{'copy/mix/n':24s} {'model':>6s} {'plain':>14s} {'balanced':>14s} {'true labels':>14s}")
    for key, row in summary.items():
        cells = [f"{100 * row['model']['mean']:6.1f}"]
        for k in ("plain", "balanced", "balanced_true"):
            cells.append(f"{100 * row[k]['mean']:+5.1f} ({100 * row[k + '_worst']['mean']:+5.1f})")
        print(f"{key:24s} " + " ".join(f"{c:>14s}" for c in cells))
    if args.out:
        args.out.write_text(
            json.dumps(
                {"folds": [str(f) for f in folds], "draws": args.draws, "summary": summary},
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
