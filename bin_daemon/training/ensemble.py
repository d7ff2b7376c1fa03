"""Compare cross-validation sweeps, and their ensembles, from their saved predictions.

    python -m bin_daemon.training.ensemble SWEEP [SWEEP ...] [--out report.md]

Each SWEEP is a ``bin-daemon train --folds K`` folder (or a copy of its report, such as
``docs/crossval/NAME``) holding ``crossval.json`` and ``predictions.npz``: the int8 model's
probabilities for every held-out image, clean and on the bin-camera views (drawn at one size
for every model, so two sweeps saw the very same pixels). No model is run: this scores each
sweep and the average of their probabilities (what the daemon would do with the models
side by side, at the sum of their inference costs) on the folds every sweep has finished,
paired fold by fold on the same images. Sweeps must share their folds (same data, ``--folds``
and ``--fold-seed``) and their bin-camera views.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bin_daemon.config import load_config
from bin_daemon.errors import BinDaemonError
from bin_daemon.model.metrics import report as confusion_report
from bin_daemon.training.crossval import PREDICTIONS, load_report

FIGURES = (  # (key, label, kind of outputs, how it is printed)
    ("accuracy", "top-1 accuracy (int8)", "int8", "%"),
    ("macro_f1", "macro-F1", "int8", "f1"),
    ("min_recall", "lowest class recall", "int8", "f1"),
    ("bin_accuracy", "bin accuracy (by top-1 label)", "int8", "%"),
    ("camera_accuracy", "bin-camera: top-1 accuracy", "int8_camera", "%"),
    ("camera_macro_f1", "bin-camera: macro-F1", "int8_camera", "f1"),
)


OUTPUTS = ("int8", "int8_camera")


@dataclass
class Sweep:
    name: str
    report: dict
    labels: list[str]
    folds: np.ndarray  # per image
    paths: np.ndarray
    truth: np.ndarray
    outputs: dict[str, np.ndarray]  # "int8", "int8_camera": (images, labels) probabilities


def load_sweep(folder: Path) -> Sweep:
    report = load_report(folder)
    path = folder / report.get("predictions", PREDICTIONS)
    if "camera_views" not in report or not path.is_file():
        raise BinDaemonError(
            f"{folder}: no {PREDICTIONS} (a report from before they were saved); score its "
            "folds again with the same `bin-daemon train --folds` command and --score-only"
        )
    with np.load(path) as saved:
        return Sweep(
            name=str(folder),
            report=report,
            labels=[str(x) for x in saved["labels"]],
            folds=saved["fold"],
            paths=saved["paths"],
            truth=saved["truth"],
            outputs={key: saved[key] for key in OUTPUTS},
        )


def common_folds(sweeps: list[Sweep]) -> list[int]:
    """The folds every sweep has finished, after checking the sweeps can be paired."""
    first = sweeps[0]
    for other in sweeps[1:]:
        for what in ("folds_hash", "camera_views"):
            if other.report[what] != first.report[what]:
                raise BinDaemonError(
                    f"{other.name}: other {what.replace('_', ' ')} than {first.name} "
                    f"({other.report[what]} against {first.report[what]}); sweeps compare only "
                    "on the same folds and the same bin-camera views"
                )
        if other.labels != first.labels:
            raise BinDaemonError(f"{other.name}: labels {other.labels} differ from {first.labels}")
    folds = sorted(set.intersection(*(set(s.folds.tolist()) for s in sweeps)))
    if not folds:
        raise BinDaemonError("the sweeps have no finished fold in common")
    return folds


def _aligned(sweep: Sweep, fold: int, order: np.ndarray) -> dict[str, np.ndarray]:
    """The sweep's outputs for ``fold``'s images, in the order of the paths ``order``."""
    rows = np.flatnonzero(sweep.folds == fold)
    row_of = {str(p): r for p, r in zip(sweep.paths[rows], rows, strict=True)}
    if set(row_of) != {str(p) for p in order}:
        raise BinDaemonError(f"{sweep.name}: fold {fold} holds other images than the first sweep")
    index = np.array([row_of[str(p)] for p in order])
    return {key: value[index] for key, value in sweep.outputs.items()}


def figures(
    probs: dict[str, np.ndarray], truth: np.ndarray, labels: list[str], bin_of: dict
) -> dict:
    """Top-1, macro-F1, lowest recall and bin accuracy of (images, labels) probabilities."""
    out = {}
    for key, _, kind, _ in FIGURES:
        predicted = probs[kind].argmax(1)
        r = confusion_report(labels, truth, predicted)
        name = key.removeprefix("camera_")
        if name == "bin_accuracy":
            value = float(
                np.mean(
                    [
                        bin_of[labels[t]] == bin_of[labels[p]]
                        for t, p in zip(truth, predicted, strict=True)
                    ]
                )
            )
        else:
            value = getattr(r, name)
        out[key] = round(float(value), 4)
    return out


def compare(sweeps: list[Sweep]) -> dict:
    """Each sweep's and the ensemble's figures per common fold, with mean and spread."""
    folds = common_folds(sweeps)
    seen: dict[str, int] = {}
    for sweep in sweeps:  # one row each, even for a sweep given twice
        seen[sweep.name] = seen.get(sweep.name, 0) + 1
        if seen[sweep.name] > 1:
            sweep.name = f"{sweep.name} ({seen[sweep.name]})"
    config = load_config(None)
    labels = sweeps[0].labels
    bins = config.bin_for_label()
    bin_of = {label: bins.get(label, config.fallback_bin) for label in labels}
    rows: dict[str, list[dict]] = {s.name: [] for s in sweeps}
    rows["ensemble"] = []
    paths, truths, predicted = [], [], {kind: [] for kind in OUTPUTS}
    for fold in folds:
        first = sweeps[0]
        mine = np.flatnonzero(first.folds == fold)
        order, truth = first.paths[mine], first.truth[mine]
        members = [_aligned(s, fold, order) for s in sweeps]
        for sweep, outputs in zip(sweeps, members, strict=True):
            rows[sweep.name].append(figures(outputs, truth, labels, bin_of))
        averaged = {key: np.mean([m[key] for m in members], axis=0) for key in members[0]}
        rows["ensemble"].append(figures(averaged, truth, labels, bin_of))
        paths.extend(str(p) for p in order)
        truths.append(truth)
        for kind in OUTPUTS:  # (images, members + ensemble) top-1 labels
            tops = [m[kind].argmax(1) for m in members] + [averaged[kind].argmax(1)]
            predicted[kind].append(np.stack(tops, axis=1))
    summary = {
        name: {key: _spread([r[key] for r in per_fold]) for key, *_ in FIGURES}
        for name, per_fold in rows.items()
    }
    members_mean = {
        key: [statistics.fmean(rows[s.name][i][key] for s in sweeps) for i in range(len(folds))]
        for key, *_ in FIGURES
    }
    gain = {
        key: _spread(
            [
                100 * (e[key] - m)
                for e, m in zip((r for r in rows["ensemble"]), members_mean[key], strict=True)
            ]
        )
        for key, *_ in FIGURES
    }
    first = rows[sweeps[0].name]
    against_first = {  # paired fold by fold: the run-to-run noise of two seeds, or a gain
        name: {
            key: _spread([100 * (r[key] - f[key]) for r, f in zip(per_fold, first, strict=True)])
            for key, *_ in FIGURES
        }
        for name, per_fold in list(rows.items())[1:]
    }
    return {
        "sweeps": [s.name for s in sweeps],
        "folds": folds,
        "images": int(sum(np.sum(sweeps[0].folds == f) for f in folds)),
        "camera_views": sweeps[0].report["camera_views"],
        "per_fold": rows,
        "summary": summary,
        "ensemble_gain_points_over_members_mean": gain,
        "points_against_first_sweep": against_first,
        "shared_errors": {
            kind: shared_errors(
                paths,
                np.concatenate(truths),
                np.concatenate(predicted[kind]),
                labels,
                bin_of,
                [s.name for s in sweeps],
            )
            for kind in OUTPUTS
        },
        "inference_cost": f"{len(sweeps)} invokes per item (the sum of the members' latencies)",
    }


def shared_errors(
    paths: list[str],
    truth: np.ndarray,
    predicted: np.ndarray,
    labels: list[str],
    bin_of: dict,
    names: list[str],
) -> dict:
    """How far the members' errors overlap: an ensemble can only fix an image that some
    member gets right, so "right for at least one member" bounds any combination of them.
    ``predicted`` is (images, members + ensemble) top-1 labels."""
    wrong = predicted[:, :-1] != truth[:, None]
    every = np.flatnonzero(wrong.all(axis=1))
    return {
        "images": len(paths),
        "wrong_per_member": dict(zip(names, map(int, wrong.sum(axis=0)), strict=True)),
        "wrong_for_every_member": len(every),
        "wrong_for_some_member": int(wrong.any(axis=1).sum()),
        "right_for_some_member": round(1 - len(every) / len(paths), 4),
        "wrong_for_every_member_and_wrong_bin_by_ensemble": int(
            sum(bin_of[labels[truth[i]]] != bin_of[labels[predicted[i, -1]]] for i in every)
        ),
        "images_wrong_for_every_member": [
            {
                "path": paths[i],
                "truth": labels[truth[i]],
                "predicted": [labels[p] for p in predicted[i, :-1]],
                "bin": bin_of[labels[truth[i]]],
                "ensemble_bin": bin_of[labels[predicted[i, -1]]],
            }
            for i in every
        ],
    }


def _spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "folds": values,
    }


def _cell(kind: str, s: dict) -> str:
    if kind == "%":
        return f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f}"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _column(name: str) -> str:
    """A sweep's folder as code; the ensemble's column as a word."""
    return name if name == "ensemble" else f"`{name}`"


def render(result: dict) -> str:
    names = [*result["sweeps"], "ensemble"]
    views = result["camera_views"]
    lines = [
        f"# Sweeps compared on folds {', '.join(map(str, result['folds']))} "
        f"({result['images']} held-out images)",
        "",
        f"Int8 outputs from each sweep's `{PREDICTIONS}`; bin-camera views drawn at "
        f"{views['drawn_at']} px, seed {views['seed']} (the same pixels for every model). "
        f"Ensemble: the members' probabilities averaged ({result['inference_cost']}). "
        "Mean ± sample sd over the folds.",
        "",
        "| figure | "
        + " | ".join(map(_column, names))
        + " | ensemble minus members' mean (points) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for key, label, _, kind in FIGURES:
        gain = result["ensemble_gain_points_over_members_mean"][key]
        lines.append(
            f"| {label} | "
            + " | ".join(_cell(kind, result["summary"][n][key]) for n in names)
            + f" | {gain['mean']:+.2f} ± {gain['std']:.2f} |"
        )
    lines += _against_first_lines(result, names)
    lines += _shared_errors_lines(result["shared_errors"])
    return "\n".join(lines) + "\n"


def _against_first_lines(result: dict, names: list[str]) -> list[str]:
    against = result["points_against_first_sweep"]
    others = names[1:]
    lines = [
        "",
        f"## Paired against `{names[0]}`, fold by fold (points)",
        "",
        "Mean ± sample sd of the per-fold differences, then the lowest and highest fold.",
        "",
        "| figure | " + " | ".join(map(_column, others)) + " |",
        "|---|" + "---|" * len(others),
    ]
    for key, label, _, _ in FIGURES:
        cells = []
        for name in others:
            s = against[name][key]
            cells.append(
                f"{s['mean']:+.2f} ± {s['std']:.2f} ({min(s['folds']):+.2f} to "
                f"{max(s['folds']):+.2f})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _shared_errors_lines(shared: dict) -> list[str]:
    clean, camera = shared["int8"], shared["int8_camera"]
    lines = ["", "## Where the members' errors overlap", ""]
    for title, s in (("clean", clean), ("bin-camera", camera)):
        each = ", ".join(map(str, s["wrong_per_member"].values()))
        lines.append(
            f"- {title}: the members get {each} of {s['images']} wrong; "
            f"{s['wrong_for_every_member']} are wrong for every member "
            f"({s['wrong_for_every_member_and_wrong_bin_by_ensemble']} of them in the wrong bin), "
            f"{s['wrong_for_some_member']} for at least one. No combination of these members "
            f"can beat {100 * s['right_for_some_member']:.2f}% (right for at least one member)."
        )
    lines += [
        "",
        "Clean images wrong for every member (the ensemble's bin against the true bin):",
        "",
        "| image | true label | members' labels | bin | ensemble's bin |",
        "|---|---|---|---|---|",
    ]
    for item in clean["images_wrong_for_every_member"]:
        lines.append(
            f"| {item['path']} | {item['truth']} | {', '.join(item['predicted'])} | "
            f"{item['bin']} | {item['ensemble_bin']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+", metavar="SWEEP")
    parser.add_argument("--out", type=Path, help="also write the table here (and .json beside)")
    args = parser.parse_args(argv)
    try:
        result = compare([load_sweep(folder) for folder in args.sweeps])
    except BinDaemonError as error:
        print(f"ensemble: {error}", file=sys.stderr)
        return 2
    text = render(result)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
