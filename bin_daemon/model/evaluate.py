"""`bin-daemon evaluate`: the shipped model over a folder of class folders, honestly scored.

Each image goes through the daemon's own path (decode, :func:`preprocess.to_model_input`,
the int8 classifier). Folder names are the true labels; a folder named after no model label
is still scored (every one of its images counts as wrong) and reported. Images that cannot be
decoded are listed and skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bin_daemon.errors import BinDaemonError, ImageError
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.metrics import Report, report
from bin_daemon.model.preprocess import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Evaluation:
    report: Report
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unknown_labels: list[str] = field(default_factory=list)  # folders the model cannot predict

    def as_dict(self) -> dict:
        out = self.report.as_dict()
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
    classifier: Classifier, root: Path, on_image: Callable[[int, int], None] | None = None
) -> Evaluation:
    return evaluate_items(classifier, dataset_images(root), str(root), on_image)


def evaluate_items(
    classifier: Classifier,
    items: list[tuple[str, Path]],
    where: str,
    on_image: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score (true label, image path) pairs; ``where`` names them in errors."""
    folder_labels = sorted({label for label, _ in items})
    unknown = [label for label in folder_labels if label not in classifier.labels]
    labels = list(classifier.labels) + unknown
    truth, predicted, skipped = [], [], []
    for i, (label, path) in enumerate(items):
        try:
            prediction = classifier.classify(load_image(path))
        except ImageError as error:
            skipped.append((str(path), str(error)))
            continue
        truth.append(label)
        predicted.append(prediction.label)
        if on_image is not None:
            on_image(i + 1, len(items))
    if not truth:
        raise BinDaemonError(f"{where}: none of the {len(items)} images could be decoded")
    return Evaluation(report(labels, truth, predicted), skipped, unknown)


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
    for label in evaluation.unknown_labels:
        lines.append(
            f"note: folder '{label}' is not a label of this model; its images all count as wrong"
        )
    for path, reason in evaluation.skipped:
        lines.append(f"skipped: {reason}" if path in reason else f"skipped {path}: {reason}")
    return "\n".join(lines)
