"""Compare trained model folders on the same split, and put them in a card's backbone table.

    python -m bin_daemon.training.compare --data ../shared/datasets/trashnet --into models/ \
        RUN_DIR [RUN_DIR ...]

Every model (the ``--into`` one too) is scored again by the daemon's own path (decode,
preprocessing, the int8 classifier) on the validation and the test images of the split, so
the rows are comparable whatever run wrote them; a run made on another split is refused.
The validation columns are the ones to choose by: the model with the best mean of clean and
bin-camera validation accuracy (a bin needs both); the test columns are for reporting. The rows
replace the ``--into`` card's earlier rows of the same backbone and input size, and the
Markdown card is rendered again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.errors import BinDaemonError
from bin_daemon.loop.service import make_policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.evaluate import evaluate_items
from bin_daemon.model.preprocess import load_image
from bin_daemon.training.camera_effects import VAL_VIEWS_SEED_OFFSET, bin_camera_view
from bin_daemon.training.card import render_markdown, tunes_all_layers
from bin_daemon.training.split import Sample, read_split


def _subset(data: Path, split: list[Sample], name: str) -> list[tuple[str, Path]]:
    return [(s.label, data / s.path) for s in split if s.subset == name]


def bin_camera_accuracy(classifier: Classifier, items: list[tuple[str, Path]], seed: int) -> float:
    """Accuracy on bin-camera views of ``items``, drawn as training draws them for validation."""
    rng = np.random.default_rng(seed)
    hits = [
        classifier.classify(bin_camera_view(load_image(path), classifier.input_size, rng)).label
        == label
        for label, path in items
    ]
    return float(np.mean(hits))


def selection_score(row: dict) -> float:
    """What models are chosen by: mean int8 validation accuracy, clean and bin-camera."""
    return (row["val_int8_accuracy"] + row["val_bin_camera_accuracy"]) / 2


def _early_stop(training: dict) -> str:
    ran, planned = training.get("finetune_epochs_run"), training["settings"]["finetune_epochs"]
    return (
        f"; early stopping ended fine-tuning after {ran} of {planned} epochs"
        if ran and ran < planned
        else ""
    )


def row_for(model_dir: Path, data: Path, split: list[Sample], *, shipped: bool) -> dict:
    """The backbone-table row of one model folder, validation and test scored here."""
    own_split = read_split(model_dir / "split.csv")
    if own_split != split:
        raise BinDaemonError(
            f"{model_dir}: trained on another split than the card's; not comparable"
        )
    card = json.loads((model_dir / "model_card.json").read_text())
    classifier = Classifier.load(model_dir, num_threads=2)
    policy = make_policy(load_config(None), classifier)  # the default bins, the card's threshold
    val_run = evaluate_items(
        classifier, _subset(data, split, "val"), f"{data} (val)", policy=policy
    )
    test_run = evaluate_items(
        classifier, _subset(data, split, "test"), f"{data} (test)", policy=policy
    )
    val, test = val_run.report, test_run.report
    assert val_run.bins is not None and test_run.bins is not None
    settings = card["training"]["settings"]
    val_bin_camera = bin_camera_accuracy(
        classifier,
        _subset(data, split, "val"),
        card["dataset"]["split_seed"] + VAL_VIEWS_SEED_OFFSET,
    )
    backbone = card.get("backbone") or settings.get("backbone", "efficientnet-lite0")
    metrics = card["metrics"]
    return {
        "backbone": f"{backbone}, trained at {settings['input_size']} px, runs at "
        f"{card['input']['size']} px"
        + (f", {hard:.0%} hard views" if (hard := settings.get("hard_view_probability")) else "")
        + (", all layers fine-tuned" if tunes_all_layers(settings, card) else "")
        + (" (shipped)" if shipped else ""),
        "val_int8_accuracy": val.accuracy,
        "val_bin_camera_accuracy": val_bin_camera,
        "int8_accuracy": test.accuracy,
        "int8_macro_f1": test.macro_f1,
        "int8_min_recall": test.min_recall,
        "val_bin_accuracy": val_run.bins.top1.accuracy,
        "int8_bin_accuracy": test_run.bins.top1.accuracy,
        "float_accuracy": metrics["test_float"]["accuracy"],
        "bin_camera_accuracy": metrics["bin_camera"]["bin_camera"],
        "size_bytes": card["size_bytes"],
        "latency_ms_p50": metrics["latency_ms"]["int8_p50"],
        "note": f"`{card['training']['command']}`, {card['training']['seconds'] / 60:.1f} min"
        + _early_stop(card["training"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bin_daemon.training.compare")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the split names")
    parser.add_argument(
        "--into", type=Path, required=True, help="the model folder whose card gets the rows"
    )
    parser.add_argument("runs", type=Path, nargs="+", help="other model folders, same split")
    args = parser.parse_args(argv)
    try:
        split = read_split(args.into / "split.csv")
        rows = [row_for(args.into, args.data, split, shipped=True)]
        rows += [row_for(run, args.data, split, shipped=False) for run in args.runs]
    except (BinDaemonError, OSError, KeyError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 1
    card_path = args.into / "model_card.json"
    card = json.loads(card_path.read_text())
    new = {row["backbone"].removesuffix(" (shipped)") for row in rows}
    kept = [
        row
        for row in card["backbones"]
        if row["backbone"].removesuffix(" (shipped)") not in new
        and "shipped" not in row["backbone"]
    ]
    card["backbones"] = rows + kept
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (args.into / "MODEL_CARD.md").write_text(render_markdown(card))
    best = max(rows, key=selection_score)
    for row in rows:
        print(
            f"{row['backbone']}: val {row['val_int8_accuracy']:.1%} "
            f"(bin-camera {row['val_bin_camera_accuracy']:.1%}), test {row['int8_accuracy']:.1%}, "
            f"macro-F1 {row['int8_macro_f1']:.3f}, bin accuracy val {row['val_bin_accuracy']:.1%} "
            f"test {row['int8_bin_accuracy']:.1%}, {row['size_bytes'] / 1e6:.2f} MB"
        )
    print(
        f"best on validation (mean of clean and bin-camera, {selection_score(best):.1%}): "
        f"{best['backbone']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
