"""A probe for issue 15, not part of `make bench`: does averaging the *weights* of several
Lite0 runs (a "model soup", Wortsman et al. 2022) give one model the gain that averaging
their *outputs* gives two? It would cost nothing at inference: still one 4.0 MB model.

    python bench/weight_average_probe.py SWEEP... [--folds 1 2 3 4 5] [--reports DIR]
        [--work DIR] [--data DIR] [--out FILE]

Each SWEEP is a finished cross-validation sweep of the same architecture and folds: its
report in ``--reports``/SWEEP (``crossval.json``) and its Keras weights in
``--work``/SWEEP/fold-K (``classifier.weights.h5``, which `bin-daemon train` leaves in its
work dir). Every run fine-tuned from the same ImageNet weights, the case where soups work.

For each fold (the folds are rebuilt from the report's fold seed and checked against its
folds hash) the float Keras network is scored on the held-out fold, clean and under the
very bin-camera views the reports scored (their seed, drawn at 288 px, in split order), at
the input size the first sweep's fold chose:

- each member alone (the first member's clean figure is checked against the float figure
  its report recorded: else these are not that report's images);
- the members' softmax outputs averaged (at the members' summed cost);
- the uniform soup: every weight averaged (batch-norm statistics too);
- the greedy soup: members in order of their validation accuracy, each kept only if the
  soup's validation accuracy (the fold's ``val`` part, clean) does not drop.

Float, not int8: the soups are not exported (the rerun's bias-corrected int8 models are
+0.05 points from their float on average over five folds, -0.74 to +0.75 a fold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from bin_daemon.model.preprocess import load_image, to_model_input
from bin_daemon.training.card_metrics import _camera_view
from bin_daemon.training.crossval import CAMERA_VIEWS_AT
from bin_daemon.training.folds import fold_split, folds_hash, stratified_kfold
from bin_daemon.training.phases import WEIGHTS_FILE, TrainSettings, network, starting_weights
from bin_daemon.training.site_methods import softmax
from bin_daemon.training.split import scan_dataset


def _accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return round(float((scores.argmax(axis=1) == y).mean()), 4)


def _average(weight_sets: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [
        np.mean([ws[i] for ws in weight_sets], axis=0).astype(weight_sets[0][i].dtype)
        for i in range(len(weight_sets[0]))
    ]


class Fold:
    """One fold's inputs at one size, and a network to score weight sets on them."""

    def __init__(self, data: Path, samples, labels: list[str], size: int, view_seed: int):
        parts = {p: [s for s in samples if s.subset == p] for p in ("val", "test")}
        self.y = {p: np.array([labels.index(s.label) for s in parts[p]]) for p in parts}
        images = {p: [load_image(data / s.path) for s in parts[p]] for p in parts}
        self.x = {p: np.stack([to_model_input(i, size) for i in images[p]]) for p in parts}
        drawn = _camera_view(CAMERA_VIEWS_AT, view_seed)
        self.x["camera"] = np.stack([to_model_input(drawn(i), size) for i in images["test"]])
        self.y["camera"] = self.y["test"]
        settings = TrainSettings(data=data, out=Path("unused"), input_size=size)
        self.model, _, _ = network(settings, len(labels), starting_weights(settings))

    def logits(self, weights: list[np.ndarray], part: str) -> np.ndarray:
        self.model.set_weights(weights)
        return self.model.predict(self.x[part].astype(np.float32), batch_size=32, verbose=0)

    def load(self, path: Path) -> list[np.ndarray]:
        self.model.load_weights(path)
        return [w.copy() for w in self.model.get_weights()]


def probe_fold(fold: int, sweeps: list[str], reports: list[dict], args) -> dict:
    samples = scan_dataset(args.data)
    first = reports[0]
    folds = stratified_kfold(samples, len(first["per_fold"]), first["fold_seed"])
    if folds_hash(samples, folds) != first["folds_hash"]:
        raise SystemExit(f"{sweeps[0]}: its folds are not this dataset's (folds hash differs)")
    for name, report in zip(sweeps, reports, strict=True):
        if report["folds_hash"] != first["folds_hash"]:
            raise SystemExit(f"{name}: other folds than {sweeps[0]}'s")
    split = fold_split(samples, folds, fold - 1, first["fold_seed"])
    labels = sorted({s.label for s in split})
    row = next(r for r in first["per_fold"] if r["fold"] == fold)
    f = Fold(args.data, split, labels, row["input_size"], first["camera_views"]["seed"])

    members = [f.load(args.work / name / f"fold-{fold}" / WEIGHTS_FILE) for name in sweeps]
    scored: dict[str, dict[str, float]] = {}
    outputs = {p: [] for p in ("test", "camera")}
    val_accuracy = []
    for name, weights in zip(sweeps, members, strict=True):
        scored[name] = {}
        for part in ("test", "camera"):
            logits = f.logits(weights, part)
            outputs[part].append(softmax(logits))
            scored[name][part] = _accuracy(logits, f.y[part])
        val_accuracy.append(_accuracy(f.logits(weights, "val"), f.y["val"]))
        scored[name]["val"] = val_accuracy[-1]
    if abs(scored[sweeps[0]]["test"] - row["float_accuracy"]) > 1.5 / len(f.y["test"]):
        raise SystemExit(
            f"{sweeps[0]} fold {fold}: float top-1 {scored[sweeps[0]]['test']} here, "
            f"{row['float_accuracy']} in its crossval.json"
        )
    scored["output average"] = {p: _accuracy(sum(outputs[p]), f.y[p]) for p in outputs}

    uniform = _average(members)
    scored["uniform soup"] = {p: _accuracy(f.logits(uniform, p), f.y[p]) for p in f.x}

    order = sorted(range(len(members)), key=lambda i: -val_accuracy[i])
    kept, best = [order[0]], val_accuracy[order[0]]
    for i in order[1:]:
        trial = _average([members[j] for j in [*kept, i]])
        accuracy = _accuracy(f.logits(trial, "val"), f.y["val"])
        if accuracy >= best:
            kept, best = [*kept, i], accuracy
    greedy = _average([members[j] for j in kept])
    scored["greedy soup"] = {p: _accuracy(f.logits(greedy, p), f.y[p]) for p in f.x}
    scored["greedy soup"]["members"] = [sweeps[j] for j in kept]
    for name, figures in scored.items():
        print(f"fold {fold} {name}: {figures}", flush=True)
    return scored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--reports", type=Path, default=Path("docs/crossval"))
    parser.add_argument("--work", type=Path, default=Path("runs/work"))
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/trashnet"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    try:
        reports = [
            json.loads((args.reports / s / "crossval.json").read_text()) for s in args.sweeps
        ]
        folds = {fold: probe_fold(fold, args.sweeps, reports, args) for fold in args.folds}
    except (OSError, KeyError, ValueError, StopIteration) as error:
        print(
            f"weight_average_probe: {error}; each sweep needs {args.reports}/SWEEP/crossval.json "
            f"and {args.work}/SWEEP/fold-K/{WEIGHTS_FILE} for every fold asked"
        )
        return 2
    names = list(folds[args.folds[0]])
    summary = {}
    for name in names:
        summary[name] = {
            part: round(100 * float(np.mean([folds[k][name][part] for k in folds])), 2)
            for part in ("test", "camera")
        }
        print(f"mean {name}: clean {summary[name]['test']}% bin-camera {summary[name]['camera']}%")
    if args.out:
        args.out.write_text(
            json.dumps({"sweeps": args.sweeps, "mean": summary, "folds": folds}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
