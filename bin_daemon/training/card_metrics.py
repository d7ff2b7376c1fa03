"""Bin-level and test-time-augmentation figures of a model folder, written into its card.

    python -m bin_daemon.training.card_metrics models/ [--data DIR] [--config PATH]

Scores the model in the folder by the daemon's own path (decode, preprocessing, the int8
classifier, the policy's ``decide``) on the validation and test images of its ``split.csv``,
clean and under bin-camera conditions (the views training and ``compare`` draw, from the same
seeds), with ``model.tta`` none and flip. It writes ``metrics.bin_level`` (the test split,
under the config's bins, fallback bin and the card's unsure threshold), ``metrics.tta`` and the
shipped backbone row's bin accuracies into ``model_card.json`` and renders ``MODEL_CARD.md``
again; nothing else in the card changes.

Re-run it whenever the model file changes (its card's sha256 must match the file, as for the
daemon); it also says whether the test split's top-1 confusion matrix is still the one the
card reports, which it must be for a re-export that leaves the classifications unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.errors import BinDaemonError
from bin_daemon.loop.policy import Policy
from bin_daemon.loop.service import make_policy
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.evaluate import Evaluation, evaluate_items
from bin_daemon.model.preprocess import load_image
from bin_daemon.training.camera_effects import (
    TEST_VIEWS_SEED_OFFSET,
    VAL_VIEWS_SEED_OFFSET,
    bin_camera_view,
)
from bin_daemon.training.card import render_markdown
from bin_daemon.training.split import Sample, read_split, sha256_file

SEED_OFFSETS = {"val": VAL_VIEWS_SEED_OFFSET, "test": TEST_VIEWS_SEED_OFFSET}
TTA_MODES = ("none", "flip")
LATENCY_RUNS = 60
THREADS = 2  # the daemon's default model.num_threads


def _items(data: Path, split: list[Sample], subset: str) -> list[tuple[str, Path]]:
    """The subset's (label, path) pairs, each image checked against the split's sha256."""
    items = []
    for sample in split:
        if sample.subset != subset:
            continue
        path = data / sample.path
        if not path.is_file():
            raise BinDaemonError(f"{path}: image of the split missing (is --data the right set?)")
        if sha256_file(path) != sample.sha256:
            raise BinDaemonError(f"{path}: sha256 differs from the split's; not the same image")
        items.append((sample.label, path))
    return items


def _camera_view(size: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Bin-camera views drawn in item order from ``seed``, as training and compare draw them."""
    rng = np.random.default_rng(seed)
    return lambda image: bin_camera_view(image, size, rng)


def summary(evaluation: Evaluation) -> dict:
    """The figures one row of the TTA table needs."""
    r, bins = evaluation.report, evaluation.bins
    assert bins is not None
    decided = bins.decided
    return {
        "n": r.n,
        "accuracy": round(r.accuracy, 4),
        "macro_f1": round(r.macro_f1, 4),
        "min_recall": round(r.min_recall, 4),
        "bin_accuracy": round(bins.top1.accuracy, 4),
        "coverage": round(bins.coverage.coverage, 4),
        "accuracy_covered": (
            None if bins.coverage.accuracy is None else round(bins.coverage.accuracy, 4)
        ),
        "bin_accuracy_at_threshold": round(decided.accuracy, 4),
        "recycling_contamination_at_threshold": decided.recycling_contamination.as_dict(),
    }


def latency_ms(classifier: Classifier, image: np.ndarray, runs: int = LATENCY_RUNS) -> dict:
    """p50 of ``classify`` per TTA mode, interleaved so that other load hits both alike."""
    times: dict[str, list[float]] = {mode: [] for mode in TTA_MODES}
    for mode in TTA_MODES:  # warm-up
        classifier.tta = mode
        classifier.classify(image)
    for _ in range(runs):
        for mode in TTA_MODES:
            classifier.tta = mode
            started = time.perf_counter()
            classifier.classify(image)
            times[mode].append((time.perf_counter() - started) * 1000)
    classifier.tta = "none"
    return {f"{mode}_p50": round(float(np.median(t)), 2) for mode, t in times.items()} | {
        "runs": runs,
        "threads": THREADS,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def measure(
    model_dir: Path,
    data: Path,
    policy_for: Callable[[Classifier], Policy],
    latency_runs: int = LATENCY_RUNS,
) -> dict:
    """Everything ``metrics.bin_level`` and ``metrics.tta`` hold, for one model folder."""
    card = json.loads((model_dir / "model_card.json").read_text())
    split = read_split(model_dir / "split.csv")
    seed = int(card["dataset"]["split_seed"])
    classifier = Classifier.load(model_dir, num_threads=THREADS)
    policy = policy_for(classifier)
    runs: dict[tuple[str, str, str], Evaluation] = {}
    for subset in ("val", "test"):
        items = _items(data, split, subset)
        for view_name in ("clean", "bin_camera"):
            for mode in TTA_MODES:
                classifier.tta = mode
                view = (
                    None
                    if view_name == "clean"
                    else _camera_view(classifier.input_size, seed + SEED_OFFSETS[subset])
                )
                where = f"{data} ({subset}, {view_name}, tta {mode})"
                runs[subset, view_name, mode] = evaluate_items(
                    classifier, items, where, policy=policy, view=view
                )
                print(f"[card_metrics] {where}: {summary(runs[subset, view_name, mode])}")
    classifier.tta = "none"
    test, test_camera = runs["test", "clean", "none"], runs["test", "bin_camera", "none"]
    assert test.bins is not None and test_camera.bins is not None
    card_confusion = card["metrics"]["test_int8"]["confusion"]
    sample = load_image(_items(data, split, "test")[0][1])
    return {
        "bin_level": {
            "split": "test",
            "policy": test.bins.policy,
            "test": test.bins.as_dict() | {"accuracy": round(test.report.accuracy, 4)},
            "test_bin_camera": test_camera.bins.as_dict()
            | {"accuracy": round(test_camera.report.accuracy, 4)},
            "model_sha256": classifier.sha256,
            "matches_card_test_confusion": test.report.confusion.tolist() == card_confusion,
        },
        "tta": {
            "modes": list(TTA_MODES),
            "flip": "the frame and its mirror image, probabilities averaged (model.tta: flip)",
            "results": {
                subset: {
                    view: {mode: summary(runs[subset, view, mode]) for mode in TTA_MODES}
                    for view in ("clean", "bin_camera")
                }
                for subset in ("val", "test")
            },
            "latency_ms": latency_ms(classifier, sample, latency_runs),
        },
    }


def refresh(
    model_dir: Path,
    data: Path,
    config_path: Path | None,
    command: str,
    *,
    write: bool = True,
    latency_runs: int = LATENCY_RUNS,
) -> dict:
    """Measure and write the figures into the folder's card; the updated card."""
    config = load_config(config_path)
    measured = measure(
        model_dir, data, lambda classifier: make_policy(config, classifier), latency_runs
    )
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    computed = {
        "command": command,
        "config": str(config_path) if config_path else "the bundled default config",
        "date": time.strftime("%Y-%m-%d"),
    }
    card["metrics"]["bin_level"] = measured["bin_level"] | {"computed": computed}
    card["metrics"]["tta"] = measured["tta"]
    clean = {
        subset: measured["tta"]["results"][subset]["clean"]["none"] for subset in ("val", "test")
    }
    for row in card.get("backbones", []):  # the backbone table's row of this model
        if row["backbone"].endswith("(shipped)"):
            row["val_bin_accuracy"] = clean["val"]["bin_accuracy"]
            row["int8_bin_accuracy"] = clean["test"]["bin_accuracy"]
    if write:
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        (model_dir / "MODEL_CARD.md").write_text(render_markdown(card))
    return card


def _default_data(model_dir: Path) -> Path:
    card = json.loads((model_dir / "model_card.json").read_text())
    root = Path(card["dataset"]["root"])
    return root if root.is_absolute() or root.is_dir() else model_dir.parent / root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bin_daemon.training.card_metrics",
        description="Bin-level and TTA figures of a model folder, written into its card.",
    )
    parser.add_argument("model_dir", type=Path, help="model folder with split.csv (e.g. models/)")
    parser.add_argument(
        "--data", type=Path, help="the dataset the split names (default: the card's dataset root)"
    )
    parser.add_argument(
        "--config", type=Path, help="config whose bins and fallback bin to use (default: bundled)"
    )
    parser.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=LATENCY_RUNS,
        metavar="N",
        help=f"classifications per TTA mode for the latency figure (default {LATENCY_RUNS})",
    )
    args = parser.parse_args(argv)
    command = "python -m bin_daemon.training.card_metrics " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        data = args.data or _default_data(args.model_dir)
        card = refresh(
            args.model_dir,
            data,
            args.config,
            command.strip(),
            write=not args.dry_run,
            latency_runs=args.latency_runs,
        )
    except (BinDaemonError, OSError, KeyError) as error:
        print(f"card_metrics: {error}", file=sys.stderr)
        return 1
    bins = card["metrics"]["bin_level"]
    test = bins["test"]
    print(
        f"test: bin accuracy {test['top1']['bin_accuracy']:.1%}, at threshold "
        f"{test['at_threshold']['threshold']}: coverage {test['at_threshold']['coverage']:.1%}, "
        f"bin accuracy {test['at_threshold']['bin_accuracy']:.1%}; top-1 confusion "
        + ("matches the card" if bins["matches_card_test_confusion"] else "DIFFERS from the card")
    )
    if not args.dry_run:
        print(f"wrote {args.model_dir / 'model_card.json'} and {args.model_dir / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
