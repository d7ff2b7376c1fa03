"""A probe for issue 15, not part of `make bench`: what does config `model.class_bias` give?

    python bench/class_bias_probe.py [SWEEP_DIR] [--label trash] [--out FILE]

It takes a cross-validation's saved out-of-fold int8 outputs (``predictions.npz``: every
image's probabilities from the fold model that never saw it, clean and under the report's
bin-camera views) and applies the daemon's own prior shift (``shift_priors``, what
``model.class_bias: {LABEL: B}`` does) for B from 0 to 2. It first checks that B = 0
reproduces the report's per-fold top-1 (else these are not the outputs the report scored).

Two tables:

1. **fixed B**: each B over all five folds (mean over folds, as the report): clean and
   bin-camera top-1, macro-F1, lowest class recall, LABEL's recall and precision, bin
   accuracy and recycling contamination under the bundled default bins (top-1, as the
   report), and coverage at each fold's own unsure threshold;
2. **nested**: B chosen on four folds' outputs (the one that most raises their lowest
   class recall while their clean top-1 stays within half a point), scored on the fifth.

No image is read and no model is run: a few seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.loop.policy import Policy
from bin_daemon.model.classifier import shift_priors
from bin_daemon.model.evaluate import bin_metrics
from bin_daemon.model.metrics import report

ROOT = Path(__file__).resolve().parent.parent
GRID = [round(0.25 * i, 2) for i in range(9)]  # 0 .. 2
MAX_CLEAN_DROP = 0.005  # the nested choice: clean top-1 within half a point of B = 0


def figures(
    probs: np.ndarray, camera: np.ndarray, truth: np.ndarray, labels: list[str], threshold: float
) -> dict[str, float]:
    clean = report(labels, truth, probs.argmax(1))
    cam = report(labels, truth, camera.argmax(1))
    label_names = [labels[i] for i in truth]
    predicted = [labels[i] for i in probs.argmax(1)]
    config = load_config(None)
    policy = Policy(config.bin_for_label(), config.fallback_bin, threshold)
    bins = bin_metrics(policy, label_names, predicted, [float(p.max()) for p in probs])
    return {
        "accuracy": clean.accuracy,
        "camera_accuracy": cam.accuracy,
        "macro_f1": clean.macro_f1,
        "min_recall": clean.min_recall,
        "recall": {k: v.recall for k, v in clean.per_class.items()},
        "precision": {k: v.precision for k, v in clean.per_class.items()},
        "bin_accuracy": bins.top1.accuracy,
        "recycling_contamination": bins.top1.recycling_contamination.share or 0.0,
        "coverage": bins.coverage.coverage,
        "accuracy_covered": bins.coverage.accuracy or 0.0,
    }


def shifted(probs: np.ndarray, labels: list[str], label: str, b: float) -> np.ndarray:
    return np.stack([shift_priors(p, labels, {label: b}) for p in probs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep", type=Path, nargs="?", default=ROOT / "docs" / "crossval" / "lite2-288-hv08"
    )
    parser.add_argument("--label", default="trash")
    parser.add_argument("--out", type=Path, help="default: SWEEP/class_bias.json")
    args = parser.parse_args()
    report_json = json.loads((args.sweep / "crossval.json").read_text())
    with np.load(args.sweep / "predictions.npz") as saved:
        outputs = {k: saved[k] for k in saved.files}
    labels = [str(v) for v in outputs["labels"]]
    folds = sorted({int(f) for f in outputs["fold"]})
    thresholds = {int(r["fold"]): float(r["unsure_threshold"]) for r in report_json["per_fold"]}

    def fold_figures(fold: int, b: float) -> dict:
        at = outputs["fold"] == fold
        return figures(
            shifted(outputs["int8"][at], labels, args.label, b),
            shifted(outputs["int8_camera"][at], labels, args.label, b),
            outputs["truth"][at].astype(int),
            labels,
            thresholds[fold],
        )

    table = {b: {f: fold_figures(f, b) for f in folds} for b in GRID}
    for row in report_json["per_fold"]:  # B = 0 must be the report's own figures
        mine = table[0.0][int(row["fold"])]
        for key in ("accuracy", "camera_accuracy", "min_recall"):
            if abs(mine[key] - row[key]) > 1e-3:
                raise SystemExit(
                    f"fold {row['fold']}: {key} {mine[key]:.4f} here, {row[key]} in the report: "
                    "not the outputs the report scored"
                )

    def mean(rows: list[dict], key: str, sub: str | None = None) -> float:
        return float(np.mean([r[key][sub] if sub else r[key] for r in rows]))

    keys = ["accuracy", "camera_accuracy", "macro_f1", "min_recall", "bin_accuracy",
            "recycling_contamination", "coverage", "accuracy_covered"]  # fmt: skip
    fixed = []
    for b in GRID:
        rows = list(table[b].values())
        fixed.append(
            {
                "bias": b,
                **{k: round(mean(rows, k), 4) for k in keys},
                "label_recall": round(mean(rows, "recall", args.label), 4),
                "label_precision": round(mean(rows, "precision", args.label), 4),
            }
        )
    nested = []
    for fold in folds:
        others = [f for f in folds if f != fold]

        def pooled(b: float, others: list[int] = others) -> tuple[float, float]:
            at = np.isin(outputs["fold"], others)
            p = shifted(outputs["int8"][at], labels, args.label, b)
            r = report(labels, outputs["truth"][at].astype(int), p.argmax(1))
            return r.min_recall, r.accuracy

        base_accuracy = pooled(0.0)[1]
        allowed = [b for b in GRID if pooled(b)[1] >= base_accuracy - MAX_CLEAN_DROP]
        chosen = max(allowed, key=lambda b: (round(pooled(b)[0], 6), -b))
        before, after = table[0.0][fold], table[chosen][fold]
        nested.append(
            {"fold": fold, "chosen_bias": chosen}
            | {f"{k}_before": round(before[k], 4) for k in keys}
            | {f"{k}_after": round(after[k], 4) for k in keys}
        )
    result = {
        "sweep": str(
            args.sweep.relative_to(ROOT) if args.sweep.is_relative_to(ROOT) else args.sweep
        ),
        "label": args.label,
        "what": "config model.class_bias {LABEL: B}, applied by the daemon's shift_priors to "
        "the cross-validation's out-of-fold int8 outputs; mean over folds",
        "fixed": fixed,
        "nested": nested,
        "nested_mean": {
            f"{k}_{when}": round(float(np.mean([r[f"{k}_{when}"] for r in nested])), 4)
            for k in keys
            for when in ("before", "after")
        },
    }
    out = args.out or args.sweep / "class_bias.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| {args.label} bias | clean | camera | macro-F1 | lowest recall | {args.label} "
          "recall | precision | bin acc. | contamination | coverage |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in fixed:
        print(
            f"| {r['bias']:g} | {r['accuracy']:.2%} | {r['camera_accuracy']:.2%} | "
            f"{r['macro_f1']:.3f} | {r['min_recall']:.3f} | {r['label_recall']:.3f} | "
            f"{r['label_precision']:.3f} | {r['bin_accuracy']:.2%} | "
            f"{r['recycling_contamination']:.2%} | {r['coverage']:.2%} |"
        )
    print("nested: " + ", ".join(f"fold {r['fold']} B={r['chosen_bias']:g}" for r in nested))
    m = result["nested_mean"]
    print(
        "nested, mean over folds: "
        + ", ".join(f"{k} {m[k + '_before']:.4f} -> {m[k + '_after']:.4f}" for k in keys)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
