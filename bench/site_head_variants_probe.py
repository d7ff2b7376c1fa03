"""A probe for issue 15 / docs/SITE.md, not part of `make bench`: the site head with other
settings, on the five fold models of the shipped recipe.

    python bench/site_head_variants_probe.py [SWEEP_DIR]

For each fold folder of a cross-validation sweep (its model card needs
``embedding_reference``: ``python -m bin_daemon.training.site_experiments --model-dir FOLD
--write-reference``), the site and camera copies of its held-out images are embedded (cached
in ``runs/site_cache/``) and the few-shot curves of ``site_experiments`` are drawn for: the
model, the shipped head, the head with a 4x and 16x stiffer pull towards the model's layer
(``L2_PER_EXAMPLE`` 20 and 80), the head re-centring only (no fine-tuning steps; also onto
the plain instead of the class-balanced training mean), and ``align_taught`` (re-centring in
feature space onto the plain training mean, clipped at zero; also unclipped), and the head
fitted on ``align_taught``'s features. Prints each one's gain over the model (mean ± sd over
folds) and coverage at the 0.85 threshold. About 1 minute with the embeddings cached, 3
minutes a fold without. ``PROBE_FRESH_DRAWS=N`` draws other teaching/scoring halves than
SITE.md's (N=1 is its fresh-draw table); ``PROBE_METHODS=a,b`` runs only those (and the model).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bin_daemon.site import head as H
from bin_daemon.training import site_experiments as X


def with_setting(name: str, value: float) -> Callable:
    def fit(ctx, E, y):
        old = getattr(H, name)
        setattr(H, name, value)
        try:
            return X.fit_site_head(ctx, E, y)
        finally:
            setattr(H, name, old)

    return fit


def recentre_on_plain_mean(train_embeddings: np.ndarray) -> Callable:
    """The head re-centring only, onto the plain (not class-balanced) training mean."""

    def fit(ctx, E, y):
        reference = train_embeddings.mean(axis=0) @ ctx.W0.T + ctx.b0
        read, steps = H.read_reference, H.STEPS
        H.read_reference, H.STEPS = (lambda path, n: reference), 0
        try:
            return X.fit_site_head(ctx, E, y)
        finally:
            H.read_reference, H.STEPS = read, steps

    return fit


def align_taught_unclipped(ctx, E, y):
    """``align_taught`` without clipping the re-centred features at zero."""
    site_mean, _ = X.M.site_stats(E, y)
    return lambda F: X.M.softmax(X.M.model_logits(ctx, F - site_mean + ctx.mu_t))


def head_on_aligned(ctx, E, y):
    """The head fitted on embeddings aligned in feature space as ``align_taught`` aligns them
    (minus the taught frames' class-balanced mean, plus the training split's plain mean,
    clipped at zero), with no logit re-centring of its own; the same condition (every model
    label taught) as the head's re-centring."""
    if not np.all(np.isin(np.arange(ctx.n_model), y)):
        return X.fit_site_head(ctx, E, y)
    site_mean, _ = X.M.site_stats(E, y)

    def align(F: np.ndarray) -> np.ndarray:
        return np.maximum(F - site_mean + ctx.mu_t, 0.0)

    read = H.read_reference
    H.read_reference = lambda path, n: None
    try:
        predict = X.fit_site_head(ctx, align(E), y)
    finally:
        H.read_reference = read
    return lambda F: predict(align(F))


def methods(train_embeddings: np.ndarray) -> dict[str, Callable]:
    return {
        "model": X.M.fit_model,
        "site_head": X.fit_site_head,
        "site_head_fine_tuned_always": with_setting("ALIGN_BELOW", 0),  # before 2026-12-05
        "head_pull_x4": with_setting("L2_PER_EXAMPLE", 4 * H.L2_PER_EXAMPLE),
        "head_pull_x16": with_setting("L2_PER_EXAMPLE", 16 * H.L2_PER_EXAMPLE),
        "head_recentre_only": with_setting("STEPS", 0),
        "head_recentre_only_plain_mean": recentre_on_plain_mean(train_embeddings),
        "align_taught_unclipped": align_taught_unclipped,
        "align_taught": lambda c, E, y: X.M.fit_align(c, E, y, "taught"),
        "head_on_aligned": head_on_aligned,
    }


def main() -> int:
    sweep = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cv/lite2-288-hv08")
    X.SEED += 7919 * int(os.environ.get("PROBE_FRESH_DRAWS", "0"))  # other draws than SITE.md's
    only = os.environ.get("PROBE_METHODS")
    results = {}
    for fold in sorted(sweep.glob("fold-*")):
        X.MODEL, X.SPLIT = fold / "waste_classifier.tflite", fold / "split.csv"
        labels = (fold / "labels.txt").read_text().split()
        copies = X.collect()
        train = copies["train"]["embeddings"].astype(np.float64)
        chosen = methods(train)
        if only:
            chosen = {name: chosen[name] for name in ["model", *only.split(",")]}
        results[fold.name] = X.curves(copies, labels, chosen, X.DRAWS)
    shots = [*map(str, X.SHOTS), "all"]
    print(
        f"{len(results)} folds; gain over the model in points (coverage at {X.THRESHOLD}, "
        "accuracy of the items kept)"
    )
    for copy in ("site", "camera"):
        print(f"| {copy} copy | " + " | ".join(f"{s}/class" for s in shots) + " |")
        print("|---|" + "---|" * len(shots))
        for method in next(iter(results.values()))[copy]["1"]:
            cells = []
            for s in shots:
                rows = [r[copy][s] for r in results.values()]
                gains = [100 * (r[method]["accuracy"]["mean"] - r["model"]["accuracy"]["mean"])
                         for r in rows]  # fmt: skip
                coverage = 100 * np.mean([r[method]["coverage"]["mean"] for r in rows])
                kept = 100 * np.mean([r[method]["accepted_accuracy"]["mean"] for r in rows])
                cells.append(
                    f"{np.mean(gains):+.1f} ± {np.std(gains):.1f} ({coverage:.0f}%, {kept:.1f}%)"
                )
            print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
