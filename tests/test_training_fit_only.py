"""Fitting without TensorFlow (``--fit-only``), then exporting and scoring with ``--resume``.

On a GPU machine the fit runs on Keras's JAX backend; here it runs on the TensorFlow backend,
which computes the same phases. The weights file it leaves, its transport form (no optimizer
state, float16) and the packed ImageNet weights are checked value by value; then a tiny 2-fold
sweep is fitted and scored through the CLI, end to end (96 px, 1 epoch).
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bin_daemon.cli import main

keras = pytest.importorskip("keras", reason="needs the [train] extra")
pytest.importorskip("tensorflow", reason="needs the [train] extra")

from bin_daemon.errors import BinDaemonError  # noqa: E402
from bin_daemon.training.fit_only import main as main_pack  # noqa: E402
from bin_daemon.training.fit_only import network_weights_only, pack_imagenet_weights  # noqa: E402
from bin_daemon.training.phases import TrainSettings, starting_weights  # noqa: E402

SAMPLES = Path(__file__).parent / "data" / "samples"
PACKAGE = Path(__file__).resolve().parents[1] / "bin_daemon"
TINY = ["--input-size", "96", "--batch-size", "8", "--export-sizes", "--compare", "none"]
TINY += ["--epochs", "1", "--head-epochs", "1"]


def _small_trained_model(tmp_path: Path) -> tuple[keras.Model, Path]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="classes")])
    model.compile(keras.optimizers.AdamW(1e-2), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 4)), rng.normal(size=(16, 3)), epochs=2, verbose=0)
    saved = tmp_path / "trained.weights.h5"
    model.save_weights(saved)
    return model, saved


def test_the_weights_file_keeps_the_network_and_drops_the_optimizer_state(tmp_path):
    import h5py

    model, saved = _small_trained_model(tmp_path)
    with h5py.File(saved) as source:
        assert "optimizer" in source  # what Keras writes: the AdamW moments too
    for half in (False, True):
        target = tmp_path / f"half-{half}.weights.h5"
        network_weights_only(saved, target, half)
        with h5py.File(target) as written:
            assert "optimizer" not in written
            datasets: list = []
            written.visititems(lambda _name, item, found=datasets: found.append(item))
            dtypes = {item.dtype for item in datasets if isinstance(item, h5py.Dataset)}
            assert dtypes == {np.dtype(np.float16 if half else np.float32)}
        fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="classes")])
        fresh.load_weights(target)
        for loaded, trained in zip(fresh.get_weights(), model.get_weights(), strict=True):
            assert loaded.dtype == np.float32  # cast back on loading
            if half:
                assert loaded == pytest.approx(trained, rel=1e-3, abs=1e-4)
                assert not np.array_equal(loaded, trained)  # really rounded
            else:
                assert np.array_equal(loaded, trained)


def test_packed_imagenet_weights_are_the_packages_without_its_classifier(tmp_path):
    from bin_daemon.training.backbones import imagenet_weights

    packed = pack_imagenet_weights("efficientnet-lite0", tmp_path / "lite0.npz")
    settings = TrainSettings(data=Path("."), out=Path("."), imagenet_weights=packed)
    loaded, original = starting_weights(settings), imagenet_weights("efficientnet-lite0")
    assert set(loaded) == {k for k in original if not k.startswith("_fc.")}
    assert "_fc.weight" in original and "_conv_stem.weight" in loaded
    assert all(np.array_equal(loaded[k], original[k]) for k in loaded)
    lite2 = TrainSettings(
        data=Path("."), out=Path("."), backbone="efficientnet-lite2", imagenet_weights=packed
    )
    with pytest.raises(BinDaemonError, match="packed for efficientnet-lite0, this run trains"):
        starting_weights(lite2)
    missing = TrainSettings(data=Path("."), out=Path("."), imagenet_weights=tmp_path / "no.npz")
    with pytest.raises(BinDaemonError, match=r"not readable as packed weights.*pack-weights"):
        starting_weights(missing)
    assert main_pack(["pack-weights", str(tmp_path / "no-such-dir" / "x.npz")]) == 2


def test_half_packed_imagenet_weights_load_as_float32_within_float16_rounding(tmp_path):
    full = pack_imagenet_weights("efficientnet-lite0", tmp_path / "full.npz")
    assert main_pack(["pack-weights", str(tmp_path / "half.npz"), "--half"]) == 0
    half = tmp_path / "half.npz"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    with np.load(half) as stored:
        assert stored["_conv_stem.weight"].dtype == np.float16
    loaded = starting_weights(TrainSettings(data=Path("."), out=Path("."), imagenet_weights=half))
    exact = starting_weights(TrainSettings(data=Path("."), out=Path("."), imagenet_weights=full))
    assert set(loaded) == set(exact)
    for key, value in exact.items():
        assert loaded[key].dtype == value.dtype  # floats back to float32, counters unchanged
        if value.dtype == np.float32:
            assert loaded[key] == pytest.approx(value, rel=2**-10, abs=1e-7)
    assert not np.array_equal(loaded["_conv_stem.weight"], exact["_conv_stem.weight"])


def test_half_packing_refuses_a_weight_beyond_float16s_range(tmp_path, monkeypatch, capsys):
    import bin_daemon.training.fit_only as fit_only

    large = {"_conv_stem.weight": np.array([1.0, 7e4], np.float32)}
    monkeypatch.setattr(fit_only, "imagenet_weights", lambda variant: large)
    with pytest.raises(BinDaemonError, match=r"_conv_stem\.weight exceeds float16's range"):
        pack_imagenet_weights("efficientnet-lite0", tmp_path / "half.npz", half=True)
    assert main_pack(["pack-weights", str(tmp_path / "half.npz"), "--half"]) == 2
    assert "pack without --half" in capsys.readouterr().err
    assert not (tmp_path / "half.npz").exists()
    pack_imagenet_weights("efficientnet-lite0", tmp_path / "full.npz")  # float32 keeps it
    with np.load(tmp_path / "full.npz") as stored:
        assert stored["_conv_stem.weight"][1] == np.float32(7e4)


def _module_imports(module: str) -> set[str]:
    """The modules ``module`` imports when it is imported (module level, not in functions)."""
    tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_fitting_imports_no_tensorflow_at_module_level():
    """The GPU machine has Keras's JAX and torch backends but no TensorFlow."""
    seen, todo, outside = set(), ["bin_daemon.training.fit_only"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _module_imports(module):
            if name.startswith("bin_daemon"):
                if (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file():
                    todo.append(name)
            else:
                outside.add(name.split(".")[0])
    assert "bin_daemon.training.phases" in seen and "bin_daemon.training.data" in seen
    assert "tensorflow" not in outside and "bin_daemon.training.export" not in seen
    assert outside <= {"__future__", "argparse", "collections", "cv2", "dataclasses"} | {
        "hashlib", "csv", "json", "keras", "math", "numpy", "pathlib", "pickle", "random",
        "struct", "sys", "time", "typing", "os", "importlib",
    }  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit-only")
    data = root / "data"
    for folder in SAMPLES.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, data / folder.name)
    weights = pack_imagenet_weights("efficientnet-lite0", root / "lite0.npz")
    fits = root / "fits"
    args = ["train", "--data", str(data), "--out", str(fits), "--folds", "2", *TINY]
    fit_args = ["--fit-only", "--half-weights", "--imagenet-weights", str(weights)]
    assert main([*args, *fit_args, "--fold", "2"]) == 0
    assert not (fits / "fold-1").exists()  # one process can fit some folds, another the rest
    assert main([*args, *fit_args, "--fold", "1"]) == 0
    return data, fits, root


def test_fit_only_leaves_each_folds_split_weights_and_record(fitted):
    import h5py

    _data, fits, _ = fitted
    for fold in (1, 2):
        folder = fits / f"fold-{fold}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "classifier.weights.h5", "split.csv", "training_results.json",
        ]  # fmt: skip
        record = json.loads((folder / "training_results.json").read_text())["training"]
        assert record["fitted_on"] == f"Keras {keras.__version__} on tensorflow, cpu:0"
        assert record["finetune_epochs_run"] == 1 and record["input_size"] == 96
        with h5py.File(folder / "classifier.weights.h5") as weights:
            assert "optimizer" not in weights and "layers" in weights


def test_a_fitted_sweep_is_exported_and_scored_by_resuming_it(fitted, tmp_path):
    data, fits, _ = fitted
    out = tmp_path / "cv"
    args = ["train", "--data", str(data), "--out", str(out), "--folds", "2", *TINY]
    assert main([*args, "--resume", str(fits), "--work-dir", str(tmp_path / "work")]) == 0
    report = json.loads((out / "crossval.json").read_text())
    assert report["complete"] and report["resumed_from"] == str(fits)
    for fold in (1, 2):
        results = json.loads((out / f"fold-{fold}" / "training_results.json").read_text())
        fitted_record = json.loads((fits / f"fold-{fold}" / "training_results.json").read_text())
        assert results["training"]["resumed_fitted_on"] == fitted_record["training"]["fitted_on"]
        assert (out / f"fold-{fold}" / "waste_classifier.tflite").stat().st_size > 0
        assert (out / f"fold-{fold}" / "split.csv").read_text() == (
            fits / f"fold-{fold}" / "split.csv"
        ).read_text()


def test_fit_only_refuses_what_it_cannot_do(fitted, capsys):
    data, fits, root = fitted
    base = ["train", "--data", str(data), "--out", str(root / "x"), *TINY]
    assert main([*base, "--folds", "2", "--fold", "1"]) != 0
    assert "--fold is for --fit-only" in capsys.readouterr().err
    assert main([*base, "--fit-only", "--folds", "2", "--fold", "3"]) != 0
    assert "numbered 1 to 2" in capsys.readouterr().err
    assert main([*base, "--fit-only", "--teacher", str(fits)]) != 0
    assert "no --teacher" in capsys.readouterr().err
    assert main([*base, "--fit-only", "--all-data", "--crossval", str(fits)]) != 0
    assert "not with --all-data" in capsys.readouterr().err


def test_a_sweep_fitted_in_part_is_scored_in_part(fitted, tmp_path, capsys):
    data, fits, _ = fitted
    part = tmp_path / "part"
    shutil.copytree(fits / "fold-2", part / "fold-2")  # fold 1 is still being fitted elsewhere
    out = tmp_path / "cv"
    args = ["train", "--data", str(data), "--out", str(out), "--folds", "2", *TINY]
    assert main([*args, "--resume", str(part), "--work-dir", str(tmp_path / "work")]) == 0
    assert f"fold 1/2: not in {part}; left unfinished" in capsys.readouterr().out
    report = json.loads((out / "crossval.json").read_text())
    assert not report["complete"] and report["folds_finished"] == 1
    assert [row["fold"] for row in report["per_fold"]] == [2]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--resume", str(empty), "--out", str(tmp_path / "none")]) != 0
    assert "no fold is trained yet" in capsys.readouterr().err


def test_the_int8_input_always_covers_every_pixel_value():
    from bin_daemon.training.export import pin_input_range

    grey = np.full((8, 8, 3), 128, np.uint8)
    pinned = pin_input_range(grey)
    assert pinned.min() == 0 and pinned.max() == 255
    assert (grey == 128).all()  # a copy: the representative set itself is untouched
    assert (pinned != grey).any(axis=2).sum() == 2  # two pixels changed, nothing else


def test_resuming_with_other_recipe_flags_is_refused(fitted, tmp_path, capsys):
    """Its report would otherwise name this command's recipe for weights trained another way."""
    data, fits, _ = fitted
    args = ["train", "--data", str(data), "--out", str(tmp_path / "cv"), "--folds", "2", *TINY]
    assert main([*args, "--resume", str(fits), "--finetune-blocks", "18"]) != 0
    error = capsys.readouterr().err
    assert "trained with other recipe settings: finetune_blocks 12 (this command: 18)" in error
    assert not (tmp_path / "cv" / "crossval.json").exists()
