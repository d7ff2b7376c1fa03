"""The int8 export's accuracy levers: quantisation-aware fine-tuning (training.qat: the fake
quantisation, where it goes, that the export keeps its ranges) and bias correction
(training.bias_correction)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="needs the [train] extra")

import keras

from bin_daemon.training.backbones import efficientnet_lite
from bin_daemon.training.bias_correction import correct_biases, int8_rounded
from bin_daemon.training.export import to_int8_tflite
from bin_daemon.training.qat import (
    QUANT_SUFFIX,
    FakeQuant,
    Int8Conv2D,
    Int8DepthwiseConv2D,
    activation_names,
    activation_ranges,
    copy_weights,
    fake_quant_tap,
    rounded_per_channel,
)
from bin_daemon.training.tflite_eval import TFLiteModel
from bin_daemon.training.train import _at_size, _build


def test_fake_quant_rounds_onto_256_levels_and_clips_outside_the_range():
    layer = FakeQuant(-1.0, 3.0)
    x = np.linspace(-2.0, 4.0, 1001, dtype=np.float32)
    y = np.asarray(layer(x))
    step = 4.0 / 255
    assert y.min() == pytest.approx(-1.0, abs=step) and y.max() == pytest.approx(3.0, abs=step)
    levels = np.unique(np.round((y - y.min()) / step, 3))
    assert np.allclose(levels, np.round(levels))  # every output sits on the 8-bit grid
    assert 200 < len(levels) <= 256
    assert 0.0 in y  # zero stays exact
    inside = (x > -0.9) & (x < 2.9)
    assert np.abs(y[inside] - x[inside]).max() <= step / 2 + 1e-6


def test_a_range_without_zero_is_refused():
    with pytest.raises(ValueError, match="hold zero"):
        FakeQuant(0.5, 2.0)


def test_tap_points_are_every_activation_the_int8_graph_keeps():
    names = activation_names("efficientnet-lite0")
    # stem, 16 blocks (15 with expansion) x (dw, project), 9 residual sums, head, pool
    assert len(names) == 1 + 15 + 16 * 2 + 9 + 1 + 1 == 59
    assert names[0] == "stem_relu" and names[-2:] == ["head_relu", "pool"]
    assert sum(n.endswith("_add") for n in names) == 9
    model = efficientnet_lite("efficientnet-lite0", 64).model
    assert all(model.get_layer(n) is not None for n in names)


def test_weights_move_between_plain_and_fake_quantised_networks_and_sizes():
    plain, _ = _build("efficientnet-lite0", 64, 6)
    ranges = {n: (-1.0, 2.0) for n in activation_names("efficientnet-lite0")}
    quantised = _at_size(plain, "efficientnet-lite0", 96, 6, ranges)
    assert quantised.input_shape[1:3] == (96, 96)
    assert sum(isinstance(layer, FakeQuant) for layer in quantised.layers) == 59
    back = _at_size(quantised, "efficientnet-lite0", 64, 6)
    for a, b in zip(plain.get_weights(), back.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="not_here")])
    with pytest.raises(ValueError, match="no layer 'stem_conv'"):
        copy_weights(other, plain)


def test_the_int8_export_keeps_the_fake_quantised_ranges():
    """The converter takes each fake-quantised tensor's scale from its range, not from the
    representative set (which would give the plain network's calibrated ranges)."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    plain, _ = _build("efficientnet-lite0", 64, 6)
    ranges = activation_ranges(plain, "efficientnet-lite0", images)
    assert all(lo <= 0.0 <= hi for lo, hi in ranges.values())
    assert ranges["stem_relu"][1] <= 6.0
    narrowed = {n: (lo * 0.5, hi * 0.5) for n, (lo, hi) in ranges.items()}  # not calibratable
    quantised = _at_size(plain, "efficientnet-lite0", 64, 6, narrowed)
    features = keras.Model(quantised.input, quantised.get_layer("head_dropout").input)
    head = quantised.get_layer("classes")
    probabilities = keras.layers.Softmax()(head(features.output))
    tflite = to_int8_tflite(keras.Model(features.input, probabilities), images)
    model = TFLiteModel(tflite, 1)
    scales = {
        round(float(t["quantization"][0]), 5)
        for t in model.interpreter.get_tensor_details()
        if "block3_project" in t["name"]
    }
    lo, hi = narrowed["block3_project"]
    assert round((hi - lo) / 255, 5) in scales
    assert model.predict(images).shape == (8, 6)


def test_fake_quant_tap_names_each_layer_after_the_point_it_quantises():
    ranges = {n: (0.0, 6.0) for n in activation_names("efficientnet-lite0")}
    model = efficientnet_lite("efficientnet-lite0", 32, tap=fake_quant_tap(ranges)).model
    assert isinstance(model.get_layer("pool" + QUANT_SUFFIX), FakeQuant)
    assert model.output is model.get_layer("pool" + QUANT_SUFFIX).output  # the last step
    assert model.get_layer("block3_project" + QUANT_SUFFIX).input is (
        model.get_layer("block3_project").output
    )


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_int8_convolutions_compute_with_rounded_kernels_and_pass_gradients_straight(kind):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 9, 9, 4)).astype(np.float32))
    if kind == "conv":
        plain, int8 = keras.layers.Conv2D(3, 3), Int8Conv2D(3, 3)
    else:
        plain, int8 = keras.layers.DepthwiseConv2D(3), Int8DepthwiseConv2D(3)
    plain.build(x.shape)
    int8.build(x.shape)
    kernel = rng.normal(size=plain.kernel.shape).astype(np.float32)
    bias = rng.normal(size=plain.bias.shape).astype(np.float32)
    int8.set_weights([kernel, bias])
    # the converter's rounding (bias_correction.int8_rounded) is what the layer computes with
    plain.set_weights([int8_rounded(kernel, depthwise=kind == "depthwise"), bias])
    np.testing.assert_allclose(np.asarray(int8(x)), np.asarray(plain(x)), atol=1e-5)
    plain.set_weights([kernel, bias])
    assert np.abs(np.asarray(int8(x)) - np.asarray(plain(x))).max() > 1e-4  # it does round
    gradients = []
    for layer in (plain, int8):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(layer(x) ** 2)
        gradients.append(tape.gradient(total, layer.trainable_weights[0]))
    # straight-through: the same gradient formula, at the rounded forward pass's outputs
    assert np.corrcoef(np.ravel(gradients[0]), np.ravel(gradients[1]))[0, 1] > 0.99


def test_the_quantisation_aware_network_computes_what_the_int8_model_does():
    """Pooled features of int8 kernels + fake-quantised activations in Keras against the
    converted int8 model's embedding output: much closer to it than the float network's, and
    than activations fake-quantised alone (weight rounding is most of the int8 error)."""
    from bin_daemon.model.classifier import dequantize
    from bin_daemon.training.backbones import imagenet_weights

    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    backbone = efficientnet_lite("efficientnet-lite0", 96, imagenet_weights())
    plain = keras.Model(
        backbone.model.input,
        keras.layers.Dense(6, name="classes")(
            keras.layers.Dropout(0.0, name="head_dropout")(backbone.model.output)
        ),
    )
    ranges = activation_ranges(plain, "efficientnet-lite0", images)
    simulated = _at_size(plain, "efficientnet-lite0", 96, 6, ranges, int8_weights=True)
    activations_only = _at_size(plain, "efficientnet-lite0", 96, 6, ranges)
    features = keras.Model(activations_only.input, activations_only.get_layer("head_dropout").input)
    logits = activations_only.get_layer("classes")(features.output)
    int8 = TFLiteModel(
        to_int8_tflite(keras.Model(features.input, keras.layers.Softmax()(logits)), images), 1
    )
    embedding = int8.interpreter.get_output_details()[1]
    int8_pooled = []
    for image in images:
        int8.predict_one(image)
        raw = int8.interpreter.get_tensor(embedding["index"])[0]
        int8_pooled.append(dequantize(raw, embedding["quantization"]))

    def gap(network: keras.Model) -> float:
        pooled = keras.Model(network.input, network.get_layer("head_dropout").input)
        return float(np.abs(np.asarray(pooled(images.astype(np.float32))) - int8_pooled).mean())

    simulated_gap = gap(simulated)
    assert simulated_gap < 0.6 * gap(plain), (simulated_gap, gap(plain))
    assert simulated_gap < 0.6 * gap(activations_only)


@pytest.mark.parametrize("depthwise", [False, True])
def test_int8_rounding_keeps_one_scale_per_output_channel_and_the_largest_weight(depthwise):
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 3, 4, 1) if depthwise else (3, 3, 4, 5)).astype(np.float32)
    kernel[..., 0] *= 100  # one channel far larger: per-channel scales keep the others fine
    rounded = int8_rounded(kernel, depthwise)
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    largest = np.abs(kernel).max(axis=axes, keepdims=True)
    np.testing.assert_allclose(np.abs(rounded).max(axis=axes, keepdims=True), largest, rtol=1e-6)
    levels = rounded / (largest / 127)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # on the int8 grid
    assert np.abs(rounded - kernel).max(axis=axes).max() <= (largest / 254).max() + 1e-6
    channels = (2, 3) if depthwise else (3,)
    np.testing.assert_allclose(
        np.asarray(rounded_per_channel(keras.ops.convert_to_tensor(kernel), channels)),
        rounded,
        rtol=1e-6,
    )


def test_bias_correction_cancels_the_mean_error_of_rounded_kernels():
    rng = np.random.default_rng(4)
    inputs = keras.Input((24, 24, 8))
    conv = keras.layers.Conv2D(6, 3, name="conv")
    depthwise = keras.layers.DepthwiseConv2D(3, name="dw")
    model = keras.Model(inputs, depthwise(keras.layers.ReLU()(conv(inputs))))
    for layer in (conv, depthwise):
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(size=kernel.shape).astype(np.float32), bias])
    images = rng.uniform(0, 4, (32, 24, 24, 8)).astype(np.float32) + np.arange(8)  # mean != 0

    def rounded(network: keras.Model) -> keras.Model:
        copy = keras.models.clone_model(network)
        copy.set_weights(network.get_weights())
        for layer in copy.layers:
            if layer.weights:
                kernel, bias = layer.get_weights()
                layer.set_weights([int8_rounded(kernel, layer.name == "dw"), bias])
        return copy

    reference = np.asarray(model(images)).mean(axis=(0, 1, 2))
    error_before = np.abs(np.asarray(rounded(model)(images)).mean(axis=(0, 1, 2)) - reference)
    summary = correct_biases(model, images)
    assert summary["layers"] == 2 and summary["largest_shift"] > 0
    error_after = np.abs(np.asarray(rounded(model)(images)).mean(axis=(0, 1, 2)) - reference)
    assert error_after.max() < 0.2 * error_before.max(), (error_before, error_after)
