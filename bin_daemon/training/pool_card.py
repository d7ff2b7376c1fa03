"""The card of a model trained on the whole pool: its expected accuracy is the cross-validated one.

A whole-pool model has no held-out images of its own, so the card reports the figures of
the cross-validation of the same recipe (``crossval.json``: mean and spread over folds) as
the expected accuracy, and says so; its temperature and unsure threshold were fitted on the
folds' out-of-fold predictions. The JSON keeps every key the daemon reads (labels, input,
temperature, unsure threshold, sha256, embedding).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bin_daemon.site.head import REFERENCE_KEY
from bin_daemon.training.card import _machine, identity, quantisation
from bin_daemon.training.crossval import METRICS, _fmt, _spread_cell

EXPECTED = "cross-validated"


def build_pool_card(results: dict, model_path: Path, crossval: dict, crossval_dir: Path) -> dict:
    training = results["training"]
    pool = crossval["whole_pool"]
    return {
        **identity(results, model_path, version_suffix="-pool"),
        "output": {
            "dtype": "uint8",
            "kind": "probabilities",
            "calibration": "temperature scaling, fitted on the cross-validation's out-of-fold logits",
        },
        **({"embedding": results["embedding"]} if results.get("embedding") else {}),
        **({REFERENCE_KEY: results[REFERENCE_KEY]} if results.get(REFERENCE_KEY) else {}),
        "quantisation": quantisation(results),
        "temperature": round(results["temperature"], 4),
        "unsure_threshold": results["unsure_threshold"],
        "metrics": {
            "split": EXPECTED,
            "expected": crossval["metrics"],
            "folds": crossval["folds"],
            "crossval": str(crossval_dir),
            "crossval_folds_hash": crossval["folds_hash"],
            "latency_ms": results["latency_ms"],
        },
        "targets": crossval["targets"],
        "coverage_curve_val": pool["coverage_curve"],
        "dataset": {**results["dataset"], "split_file": None},
        "training": {
            "command": training["command"],
            "seconds": training.get("command_seconds", training["total_seconds"]),
            "peak_rss_mb": training.get("peak_rss_mb"),
            "finetune_epochs_run": training["finetune_epochs_run"],
            "whole_pool": True,
            "settings": {k: v for k, v in training.items() if k not in {"command", "extra"}},
            "machine": _machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def render_pool_markdown(card: dict, crossval: dict) -> str:
    m = card["metrics"]
    pool = crossval["whole_pool"]
    tr = card["training"]
    d = card["dataset"]
    lines = [
        f"# Model card: {card['name']} (trained on the whole pool)",
        "",
        f"Version `{card['version']}`, file `{card['model_file']}` "
        f"({card['size_bytes'] / 1e6:.2f} MB), sha256 `{card['sha256']}`.",
        "",
        f"Classifies one photo of a single waste item into {', '.join(card['labels'])}. Input: "
        f"{card['input']['shape']} uint8 RGB, {card['input']['transform']}. Output: calibrated "
        f"probabilities (softmax of logits / {card['temperature']}), uint8. {card['quantisation']}.",
        "",
        "## Expected accuracy: cross-validated",
        f"This model trained on all {d['images']} images, with no held-out split, for a fixed "
        f"{tr['finetune_epochs_run']} fine-tuning epochs; nothing is left to test it on. Its "
        f"expected accuracy is the **{m['folds']}-fold cross-validated** figure of the same "
        f"recipe (`{m['crossval']}`, folds hash `{m['crossval_folds_hash'][:16]}...`): each fold's "
        "model scored on the images it never saw, through the daemon's own path. Mean ± sample "
        "standard deviation over folds (min to max). A model trained on all the folds usually "
        "does a little better than its folds' models, which saw 1/k fewer images.",
        "",
        "| metric | cross-validated: mean ± sd (min to max) |",
        "|---|---|",
    ]
    for key, label in METRICS:
        if key in m["expected"]:  # a report written before a metric existed lacks it
            lines.append(f"| {label} | {_spread_cell(key, m['expected'][key])} |")
    lines += ["", "| target | goal | cross-validated mean | met |", "|---|---|---|---|"]
    for name, t in card["targets"].items():
        lines.append(
            f"| {name} | {t['target']} | {_fmt(name, t['mean'])} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    lat = m["latency_ms"]
    lines += [
        "",
        "## Calibration and the unsure threshold",
        f"Temperature {card['temperature']} and unsure threshold **{card['unsure_threshold']:.2f}** "
        f"were fitted on {pool['calibration_from']}, not on this model's own predictions (it has "
        "no held-out images): the pooled out-of-fold logits stand for how a model of this recipe "
        "errs on unseen images. The threshold is the lowest at which the out-of-fold items kept "
        f"reach {tr['settings'].get('target_accepted_accuracy', 0.98):.0%} accuracy, never keeping "
        f"fewer than {tr['settings'].get('min_coverage', 0.85):.0%} of them.",
        "",
        "## Data and training",
        f"- Data: {d['images']} images, dataset hash `{d['hash']}`; every image trained.",
        f"- Command: `{tr['command']}`",
        f"- Duration: {tr['seconds'] / 60:.1f} min on {tr['machine']} ({tr['date']}); "
        f"{tr['finetune_epochs_run']} fine-tuning epochs (fixed: the median of the epochs early "
        "stopping kept in the folds), no validation, no early stopping; inference size "
        f"{card['input']['size']} px, the folds' most frequent choice.",
        f"- Latency p50 {lat['int8_p50']:.1f} ms ({lat['threads']} threads, on the training "
        "machine).",
    ]
    if resumed := tr["settings"].get("resume"):
        lines.append(
            f"- Resumed from `{resumed}`: the head and fine-tuning phases are that run's; this "
            "command made the int8 export (and any quantisation-aware fine-tuning), and the "
            "duration above is its own."
        )
    teachers = tr["settings"].get("teachers") or []
    if teachers:
        lines.append(
            f"- Distilled from {len(teachers)} teacher(s): "
            + ", ".join(f"`{t}`" for t in teachers)
            + f" (alpha {tr['settings']['distill_alpha']}, temperature "
            f"{tr['settings']['distill_temperature']})."
        )
    lines += [
        "",
        "## Limits",
        "- TrashNet shows one item on a white board under studio light; the bin-camera figures "
        "are simulated. The cross-validated spread says how much the figure moves with the "
        "images held out; it is not a confidence interval of this model.",
    ]
    return "\n".join(lines) + "\n"


def write_pool_card(results: dict, out: Path, crossval_dir: Path, crossval: dict) -> dict:
    """Write the card of ``out``'s model; ``crossval`` is ``crossval_dir``'s report."""
    card = build_pool_card(results, out / "waste_classifier.tflite", crossval, crossval_dir)
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_pool_markdown(card, crossval))
    return card
