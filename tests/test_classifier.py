"""The classifier: the real model on the committed samples, (de)quantisation, bad models.

Bad models are made here from bytes (a text file, a truncated copy) or are the tiny
fixtures in tests/data/models/ (random weights; see make_fixture_models.py).
"""

from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import pytest
from conftest_models import LABELS, TINY, TINY_FLOAT, make_model_dir
from hypothesis import given
from hypothesis import strategies as st

from bin_daemon.errors import ModelError
from bin_daemon.hardware.fakes import image_files
from bin_daemon.model.classifier import Classifier, dequantize, quantize
from bin_daemon.model.preprocess import load_image


@pytest.fixture(scope="module")
def real(request) -> Classifier:
    from bin_daemon.paths import shipped_models_dir

    return Classifier.load(shipped_models_dir(), num_threads=2)


# --- the real model ----------------------------------------------------------------------


def test_real_model_labels_the_committed_samples(real, samples_dir):
    files = image_files(samples_dir)
    assert len(files) == 24
    correct = [real.classify(load_image(path)).label == path.parent.name for path in files]
    assert sum(correct) >= 20, f"{sum(correct)}/24 right"


def test_real_model_scores_are_probabilities_and_top3_sorted(real, samples_dir):
    assert real.labels == LABELS
    for path in image_files(samples_dir)[::5]:
        prediction = real.classify(load_image(path))
        assert prediction.scores.sum() == pytest.approx(1.0, abs=0.03)
        scores = [score for _, score in prediction.top]
        assert len(prediction.top) == 3 and scores == sorted(scores, reverse=True)
        assert (prediction.label, prediction.confidence) == prediction.top[0]


def test_reference_kernels_agree_with_xnnpack_on_labels(real, samples_dir):
    """The cross-architecture check's slow path: same labels, scores a few steps apart."""
    from bin_daemon.paths import shipped_models_dir

    reference = Classifier.load(shipped_models_dir(), num_threads=1, reference_kernels=True)
    step = 1 / 256
    for path in image_files(samples_dir)[::3]:
        image = load_image(path)
        fast, exact = real.classify(image), reference.classify(image)
        assert fast.label == exact.label
        assert np.abs(fast.scores - exact.scores).max() <= 20 * step
        # reference kernels are deterministic integer arithmetic
        assert np.array_equal(exact.scores, reference.classify(image).scores)


def test_real_model_card_matches_the_file(real):
    assert real.sha256 == hashlib.sha256(real.model_path.read_bytes()).hexdigest()
    assert real.card["sha256"] == real.sha256
    assert 0 < real.card_unsure_threshold < 1
    assert real.input_size == real.card["input"]["size"]


# --- quantisation ------------------------------------------------------------------------


@given(st.integers(0, 255), st.sampled_from([(1.0, 0), (1.0, -128), (0.5, 0), (2.0, 3)]))
def test_input_quantisation_round_trips(pixel, params):
    scale, zero_point = params
    dtype = np.int8 if zero_point < 0 else np.uint8
    q = quantize(np.array([pixel], np.float32), params, dtype)
    assert q.dtype == dtype
    back = dequantize(q, params)[0]
    info = np.iinfo(dtype)
    lowest, highest = scale * (info.min - zero_point), scale * (info.max - zero_point)
    assert back == pytest.approx(min(max(pixel, lowest), highest), abs=scale / 2 + 1e-9)


def test_dequantise_uses_int64_arithmetic():
    q = np.array([0, 255], np.uint8)
    assert dequantize(q, (1 / 256, 0)).tolist() == [0.0, 255 / 256]
    assert dequantize(np.array([-128, 127], np.int8), (1 / 256, -128)).tolist() == [0.0, 255 / 256]


def test_tiny_uint8_model_classifies_any_image_size(tmp_path, samples_dir):
    classifier = Classifier.load(make_model_dir(tmp_path, TINY), num_threads=1)
    assert classifier.input_size == 32
    for shape in [(480, 640, 3), (20, 20, 3), (1, 300, 3)]:
        prediction = classifier.classify(np.full(shape, 128, np.uint8))
        assert prediction.label in LABELS
        assert prediction.scores.sum() == pytest.approx(1.0, abs=0.03)


def test_identity_input_quantisation_feeds_pixels_unchanged(tmp_path, samples_dir):
    classifier = Classifier.load(make_model_dir(tmp_path, TINY), num_threads=1)
    assert classifier._pixels_are_input  # scale ~1, zero point 0: every pixel maps to itself
    image = load_image(next(iter(sorted(samples_dir.rglob("*.jpg")))))
    fast = classifier.classify(image)
    classifier._pixels_are_input = False  # the general path: quantise from float
    slow = classifier.classify(image)
    assert np.array_equal(fast.scores, slow.scores)
    assert fast.preprocess_ms >= 0 and slow.preprocess_ms > 0


# --- bad models: one clear line naming the file ------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match=r"nowhere: model folder not found \(expected"):
        Classifier.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("model_card.json", r"model_card.json: model card missing"),
        ("labels.txt", r"labels.txt: labels file missing"),
        ("waste_classifier.tflite", r"waste_classifier.tflite: model file missing"),
    ],
)
def test_missing_file(tmp_path, missing, message):
    folder = make_model_dir(tmp_path, TINY)
    (folder / missing).unlink()
    with pytest.raises(ModelError, match=message):
        Classifier.load(folder)


def test_text_file_renamed_tflite(tmp_path):
    folder = make_model_dir(tmp_path, b"this is not a model\n")
    with pytest.raises(ModelError) as caught:
        Classifier.load(folder)
    assert str(caught.value) == (
        f"{folder / 'waste_classifier.tflite'}: not a TFLite model (no 'TFL3' at byte 4)"
    )


def test_truncated_model(tmp_path):
    folder = make_model_dir(tmp_path, TINY.read_bytes()[:600])
    with pytest.raises(
        ModelError, match=r"waste_classifier.tflite: the interpreter cannot load it"
    ):
        Classifier.load(folder)


def test_float_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"input type float32, expected uint8 or int8"):
        Classifier.load(make_model_dir(tmp_path, TINY_FLOAT))


def test_input_size_must_match_the_card(tmp_path):
    with pytest.raises(ModelError, match=r"input is 32x32 but its card says 224x224"):
        Classifier.load(make_model_dir(tmp_path, TINY, size=224))
    with pytest.raises(ModelError, match=r"input is 32x32 but its card says 96x96 or 128x128"):
        Classifier.load(make_model_dir(tmp_path, TINY, size=[96, 128]))
    assert Classifier.load(make_model_dir(tmp_path, TINY, size=[32, 224])).input_size == 32


def test_label_count_must_match_the_output(tmp_path):
    labels = LABELS[:5]
    with pytest.raises(ModelError, match=r"outputs 6 scores but labels.txt has 5 labels"):
        Classifier.load(make_model_dir(tmp_path, TINY, labels=labels))


def test_labels_must_match_the_card(tmp_path):
    folder = make_model_dir(tmp_path, TINY)
    (folder / "labels.txt").write_text("\n".join(reversed(LABELS)))
    with pytest.raises(ModelError, match=r"labels.txt: labels .* differ from the card's"):
        Classifier.load(folder)


def test_sha256_mismatch_refused_or_warned(tmp_path, caplog):
    folder = make_model_dir(tmp_path, TINY, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"does not match the card's 000000000000"):
        Classifier.load(folder)
    with caplog.at_level(logging.WARNING):
        classifier = Classifier.load(folder, on_sha256_mismatch="warn")
    assert classifier.sha256 != "0" * 64
    assert "using it anyway" in caplog.text


def test_model_folder_may_be_a_symlink_like_the_store_current(tmp_path):
    folder = make_model_dir(tmp_path, TINY)
    link = tmp_path / "current"
    link.symlink_to(folder)
    classifier = Classifier.load(link)
    assert classifier.model_path == folder.resolve() / "waste_classifier.tflite"
    shutil.rmtree(folder)  # loaded once: the interpreter no longer needs the file
    assert classifier.classify(np.zeros((32, 32, 3), np.uint8)).label in LABELS


# --- test-time augmentation (model.tta) --------------------------------------------------


def test_flip_tta_averages_the_frame_and_its_mirror_image(real, samples_dir):
    image = load_image(image_files(samples_dir)[11])  # metal129: 0.88 plain, 0.82 mirrored
    plain, mirrored = real.classify_once(image), real.classify_once(image[:, ::-1])
    assert not np.array_equal(plain.scores, mirrored.scores)  # the mirror is another view
    real.tta = "flip"
    try:
        both = real.classify(image)
    finally:
        real.tta = "none"
    np.testing.assert_allclose(both.scores, (plain.scores + mirrored.scores) / 2)
    assert both.label == real.labels[int(np.argmax(both.scores))]
    assert both.confidence == pytest.approx(float(both.scores.max()))
    assert [s for _, s in both.top] == sorted((s for _, s in both.top), reverse=True)
    assert real.classify(image).scores.tolist() == plain.scores.tolist()  # back to one view


def test_flip_tta_leaves_a_mirror_symmetric_frame_as_it_is(real, samples_dir):
    half = load_image(image_files(samples_dir)[11])[:, :200]
    symmetric = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    real.tta = "flip"
    try:
        both = real.classify(symmetric)
    finally:
        real.tta = "none"
    assert both.scores.tolist() == real.classify_once(symmetric).scores.tolist()
    assert not np.array_equal(  # an upside-down copy would not have kept the scores
        real.classify_once(symmetric).scores, real.classify_once(symmetric[::-1]).scores
    )


def test_unknown_tta_mode_is_refused(tmp_path, samples_dir):
    classifier = Classifier.load(make_model_dir(tmp_path, TINY))
    classifier.tta = "rotate"
    with pytest.raises(ValueError, match="tta must be one of"):
        classifier.classify(load_image(image_files(samples_dir)[0]))


def test_config_model_tta_reaches_the_loaded_classifier(tmp_path):
    from bin_daemon.config import parse_config
    from bin_daemon.loop.service import load_classifier

    folder = make_model_dir(tmp_path, TINY)
    text = (
        f"model: {{dir: {folder}, tta: flip}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins: {landfill: {labels: [trash], servo_gpio: 18}}\n"
        "fallback_bin: landfill\n"
    )
    assert load_classifier(parse_config(text)).tta == "flip"
    assert load_classifier(parse_config(text.replace(", tta: flip", ""))).tta == "none"


# --- the prior shift (model.class_bias) --------------------------------------------------


@given(
    st.lists(st.floats(-8, 8), min_size=6, max_size=6),
    st.dictionaries(st.sampled_from(LABELS), st.floats(-4, 4), max_size=3),
)
def test_a_prior_shift_of_the_probabilities_is_the_shift_of_the_logits(logits, bias):
    from bin_daemon.model.classifier import shift_priors
    from bin_daemon.site.head import softmax

    z = np.array(logits)
    b = np.array([bias.get(label, 0.0) for label in LABELS])
    np.testing.assert_allclose(shift_priors(softmax(z), LABELS, bias), softmax(z + b), atol=1e-12)


def test_class_bias_moves_the_runner_up_just_past_the_winner(real, samples_dir):
    from bin_daemon.model.classifier import shift_priors

    image = load_image(image_files(samples_dir)[11])  # metal129: metal 0.88
    plain = real.classify(image)
    (first, p1), (second, p2) = plain.top[:2]
    try:
        real.class_bias = {second: float(np.log(p1 / p2)) - 0.05}  # not quite enough
        assert real.classify(image).label == first
        real.class_bias = {second: float(np.log(p1 / p2)) + 0.05}
        shifted = real.classify(image)
    finally:
        real.class_bias = {}
    assert shifted.label == second and shifted.top[1][0] == first
    assert shifted.confidence == pytest.approx(float(shifted.scores.max()))
    np.testing.assert_allclose(
        shifted.scores, shift_priors(plain.scores, real.labels, {second: np.log(p1 / p2) + 0.05})
    )
    assert real.classify(image).scores.tolist() == plain.scores.tolist()  # back to the model


def test_config_model_class_bias_reaches_the_loaded_classifier(tmp_path):
    from bin_daemon.config import parse_config
    from bin_daemon.loop.service import load_classifier

    folder = make_model_dir(tmp_path, TINY)
    text = (
        f"model: {{dir: {folder}, class_bias: {{trash: 1.5, glass: 0}}}}\n"
        "sensor: {type: ir, gpio: 17}\n"
        "bins: {landfill: {labels: [trash], servo_gpio: 18}, glass: {labels: [glass], "
        "servo_gpio: 13}}\n"
        "fallback_bin: landfill\n"
    )
    assert dict(load_classifier(parse_config(text)).class_bias) == {"trash": 1.5}
    assert not load_classifier(
        parse_config(text.replace(", class_bias: {trash: 1.5, glass: 0}", ""))
    ).class_bias
