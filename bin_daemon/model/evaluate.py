"""`bin-daemon evaluate`: the shipped model over a folder of class folders, honestly scored.

Each image goes through the daemon's own path (decode, :func:`preprocess.to_model_input`,
the int8 classifier). Folder names are the true labels; a folder named after no model label
is still scored (every one of its images counts as wrong) and reported. Images that cannot be
decoded are listed and skipped, never fatal.

With a :class:`~bin_daemon.loop.policy.Policy` the same items are also scored at bin level
(:class:`~bin_daemon.model.metrics.BinMetrics`): the bin each true label belongs in against
the bin the daemon's own ``decide`` picks, with and without the unsure threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bin_daemon.errors import BinDaemonError, ImageError
from bin_daemon.loop.policy import Policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.metrics import (
    BinMetrics,
    Contamination,
    Report,
    bin_report,
    coverage_at,
    report,
)
from bin_daemon.model.preprocess import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Evaluation:
    report: Report
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unknown_labels: list[str] = field(default_factory=list)  # folders the model cannot predict
    bins: BinMetrics | None = None  # with a policy
    truth: list[str] = field(default_factory=list)  # per scored item, in order
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # per item, every label's probability

    def as_dict(self) -> dict:
        out = self.report.as_dict()
        if self.bins is not None:
            out["bin_level"] = self.bins.as_dict()
        out["skipped"] = [{"image": path, "error": reason} for path, reason in self.skipped]
        out["unknown_labels"] = self.unknown_labels
        return out


def dataset_images(root: Path) -> list[tuple[str, Path]]:
    """(label, image path) for every image in ``root/<label>/``, sorted."""
    if not root.is_dir():
        raise BinDaemonError(f"{root}: not a folder (expected one folder per label holding images)")
    items = [
        (folder.name, image)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for image in sorted(folder.iterdir())
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise BinDaemonError(f"{root}: no images found in label folders (e.g. {root}/glass/*.jpg)")
    return items


def evaluate(
    classifier: Classifier,
    root: Path,
    on_image: Callable[[int, int], None] | None = None,
    *,
    policy: Policy | None = None,
) -> Evaluation:
    return evaluate_items(classifier, dataset_images(root), str(root), on_image, policy=policy)


def evaluate_items(
    classifier: Classifier,
    items: list[tuple[str, Path]],
    where: str,
    on_image: Callable[[int, int], None] | None = None,
    *,
    policy: Policy | None = None,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Evaluation:
    """Score (true label, image path) pairs; ``where`` names them in errors.

    ``view`` turns each decoded image into what the camera would show (e.g. a bin-camera
    view) before it is classified; ``policy`` adds the bin-level figures.
    """
    folder_labels = sorted({label for label, _ in items})
    unknown = [label for label in folder_labels if label not in classifier.labels]
    labels = list(classifier.labels) + unknown
    truth, predicted, confidence, scores, skipped = [], [], [], [], []
    for i, (label, path) in enumerate(items):
        try:
            image = load_image(path)
            prediction = classifier.classify(image if view is None else view(image))
        except ImageError as error:
            skipped.append((str(path), str(error)))
            continue
        truth.append(label)
        predicted.append(prediction.label)
        confidence.append(prediction.confidence)
        scores.append(prediction.scores)
        if on_image is not None:
            on_image(i + 1, len(items))
    if not truth:
        raise BinDaemonError(f"{where}: none of the {len(items)} images could be decoded")
    return Evaluation(
        report(labels, truth, predicted),
        skipped,
        unknown,
        bins=None if policy is None else bin_metrics(policy, truth, predicted, confidence),
        truth=truth,
        predicted=predicted,
        confidence=confidence,
        scores=scores,
    )


RECYCLING_RULE = "every bin except the fallback bin counts as a recycling bin"


def bin_metrics(
    policy: Policy, truth: list[str], predicted: list[str], confidence: list[float]
) -> BinMetrics:
    """Bin-level figures of scored items, every bin chosen by the policy's own ``decide``.

    An item's true bin is the bin of its true label (the fallback bin for a label no bin
    lists); ``top1`` sends each item to its predicted label's bin whatever the confidence,
    ``decided`` as the daemon does (unsure items to the fallback bin).
    """
    bins = list(dict.fromkeys([*policy.bin_for_label.values(), policy.fallback_bin]))
    sure = dataclasses.replace(policy, unsure_threshold=0.0)
    true_bins = [sure.decide(label, 1.0).bin for label in truth]
    top1 = [sure.decide(label, 1.0).bin for label in predicted]
    decided = [policy.decide(label, c).bin for label, c in zip(predicted, confidence, strict=True)]
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    described = {
        "bins": {b: [lb for lb, to in policy.bin_for_label.items() if to == b] for b in bins},
        "fallback_bin": policy.fallback_bin,
        "unsure_threshold": policy.unsure_threshold,
        "recycling_bins": [b for b in bins if b != policy.fallback_bin],
        "recycling_rule": RECYCLING_RULE,
    }
    return BinMetrics(
        described,
        bin_report(bins, policy.fallback_bin, true_bins, top1),
        bin_report(bins, policy.fallback_bin, true_bins, decided),
        coverage_at(policy.unsure_threshold, confidence, correct),
    )


def format_table(evaluation: Evaluation) -> str:
    r = evaluation.report
    width = max(len(label) for label in r.labels) + 2
    lines = [
        f"{r.n} images, accuracy {r.accuracy:.1%}, macro-F1 {r.macro_f1:.3f}",
        "",
        f"{'label':<{width}}{'precision':>10}{'recall':>8}{'f1':>7}{'support':>9}",
    ]
    for label, m in r.per_class.items():
        lines.append(
            f"{label:<{width}}{m.precision:>10.3f}{m.recall:>8.3f}{m.f1:>7.3f}{m.support:>9}"
        )
    lines += ["", "confusion (rows = true, columns = predicted):"]
    short = [label[:6] for label in r.labels]
    lines.append(" " * width + "".join(f"{s:>8}" for s in short))
    for label, row in zip(r.labels, r.confusion, strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{v:>8}" for v in row))
    if evaluation.bins is not None:
        lines += ["", *format_bins(evaluation.bins)]
    for label in evaluation.unknown_labels:
        lines.append(
            f"note: folder '{label}' is not a label of this model; its images all count as wrong"
        )
    for path, reason in evaluation.skipped:
        lines.append(f"skipped: {reason}" if path in reason else f"skipped {path}: {reason}")
    return "\n".join(lines)


def _share(c: Contamination) -> str:
    return "-" if c.share is None else f"{c.share:.1%} ({c.foreign}/{c.sent})"


def format_bins(metrics: BinMetrics) -> list[str]:
    """The bin-level lines of the table: top-1 labels' bins, then the daemon's decisions."""
    p = metrics.policy
    fallback, threshold = p["fallback_bin"], p["unsure_threshold"]
    cov = metrics.coverage
    accuracy = "-" if cov.accuracy is None else f"{cov.accuracy:.1%}"
    policy = "; ".join(f"{b}: {', '.join(labels) or '-'}" for b, labels in p["bins"].items())
    rows = [("bin accuracy", f"{metrics.top1.accuracy:.1%}", f"{metrics.decided.accuracy:.1%}")]
    for name in metrics.top1.contamination:
        rows.append(
            (
                f"contamination {name}",
                _share(metrics.top1.contamination[name]),
                _share(metrics.decided.contamination[name]),
            )
        )
    rows.append(
        (
            "contamination, all recycling",
            _share(metrics.top1.recycling_contamination),
            _share(metrics.decided.recycling_contamination),
        )
    )
    width = max(len(r[0]) for r in rows) + 2
    return [
        f"bins ({policy}; fallback {fallback}); {RECYCLING_RULE} "
        f"({', '.join(p['recycling_bins'])}); contamination = share of a bin's items whose "
        "true label belongs in another bin",
        f"at the unsure threshold {threshold:.2f}: coverage {cov.coverage:.1%} "
        f"({cov.covered}/{cov.n} sorted, the rest unsure -> {fallback}), "
        f"top-1 accuracy on them {accuracy}",
        "",
        f"{'':<{width}}{'by top-1 label':>18}{f'unsure -> {fallback}':>22}",
        *(f"{name:<{width}}{a:>18}{b:>22}" for name, a, b in rows),
    ]
