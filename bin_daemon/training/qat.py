"""Quantisation-aware fine-tuning (issue 15): teach the float network the int8 model's rounding.

The int8 export lost 0.94 ± 0.64 points of top-1 against float over the five folds, and a
better calibration set did not win it back (docs/TRAINING.md). Taking the int8 model apart on
fold 4 (-1.49 points) showed where the loss is: with every activation rounded to its 8-bit
grid the float network loses nothing, and with its weights rounded per channel to int8, as
the converter does, it loses all 1.49 points (the depthwise kernels 1.0, the 3x3 stem alone
0.74, the 1x1 convolutions 0.25, the class layer none).

So the network is fine-tuned as the int8 model computes:

- each convolution's kernel is rounded per output channel to 255 symmetric levels (scale
  max|w| / 127, the converter's scheme) in the forward pass, while the gradient updates the
  float kernel as if no rounding happened (straight-through);
- every activation the int8 graph keeps as a tensor of its own (the backbone's ``tap``
  points: after each conv + ReLU6, each projection, each residual sum, the pooled features)
  is fake-quantised (``tf.quantization.fake_quant_with_min_max_vars``) over a fixed range,
  the min/max of that activation over the representative set (what the converter would
  calibrate). The converter keeps exactly these ranges (``bench/qat_probe.py``).

The exported network has plain convolutions: the converter rounds their float kernels the
same way the training did. ``tensorflow-model-optimization`` would do all this for tf_keras
(Keras 2) models only; these are Keras 3.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from bin_daemon.training.backbones import Tap, efficientnet_lite
from bin_daemon.training.bias_correction import WEIGHT_LEVELS

QUANT_SUFFIX = "_quant"


def rounded_per_channel(kernel, channel_axes: tuple[int, ...]):
    """``kernel`` rounded to int8 per channel (the axes *not* in ``channel_axes`` are
    reduced), with a straight-through gradient."""
    ops = keras.ops
    reduce_axes = tuple(a for a in range(len(kernel.shape)) if a not in channel_axes)
    largest = ops.max(ops.abs(kernel), axis=reduce_axes, keepdims=True)
    scale = ops.stop_gradient(ops.where(largest > 0, largest / WEIGHT_LEVELS, 1.0))
    rounded = ops.round(kernel / scale) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


@keras.saving.register_keras_serializable(package="bin_daemon")
class Int8Conv2D(layers.Conv2D):
    """A Conv2D whose forward pass uses its kernel rounded as the int8 model's is."""

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, rounded_per_channel(kernel, (3,)))


@keras.saving.register_keras_serializable(package="bin_daemon")
class Int8DepthwiseConv2D(layers.DepthwiseConv2D):
    """A DepthwiseConv2D (channels last, with bias) whose forward pass uses its kernel
    rounded per channel as the int8 model's is."""

    def call(self, inputs):
        kernel = rounded_per_channel(self.kernel, (2, 3))  # (kh, kw, channels, multiplier)
        outputs = keras.ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return outputs + self.bias


@keras.saving.register_keras_serializable(package="bin_daemon")
class FakeQuant(layers.Layer):
    """8-bit fake quantisation over a fixed range [lo, hi] (zero kept exact, as TFLite does)."""

    def __init__(self, lo: float = 0.0, hi: float = 6.0, **kwargs):
        super().__init__(**kwargs)
        if not lo <= 0.0 <= hi or lo == hi:
            raise ValueError(f"{self.name}: range {lo}..{hi} must hold zero and not be empty")
        self.initial = (float(lo), float(hi))

    def build(self, input_shape):
        lo, hi = self.initial
        constant = keras.initializers.Constant
        self.lo = self.add_weight(shape=(), initializer=constant(lo), name="lo", trainable=False)
        self.hi = self.add_weight(shape=(), initializer=constant(hi), name="hi", trainable=False)

    def call(self, x):
        # TensorFlow's own op: the converter takes the int8 ranges from it (bench/qat_probe.py)
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8)

    def get_config(self):
        lo, hi = self.initial
        return {**super().get_config(), "lo": lo, "hi": hi}


def activation_names(variant: str) -> list[str]:
    """The layers whose outputs the int8 graph keeps (the backbone's tap points), in order."""
    names: list[str] = []

    def record(name, tensor):
        names.append(name)
        return tensor

    efficientnet_lite(variant, 32, tap=record)
    return names


def activation_ranges(
    model: keras.Model, variant: str, images: np.ndarray, batch_size: int = 8
) -> dict[str, tuple[float, float]]:
    """Min and max of each tap point's output over ``images`` (uint8 model inputs).

    Every range holds zero, as an int8 tensor's must.
    """
    names = activation_names(variant)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    lows = np.zeros(len(names))
    highs = np.zeros(len(names))
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size].astype(np.float32), training=False)
        for i, output in enumerate(outputs):
            values = np.asarray(output)
            lows[i] = min(lows[i], float(values.min()))
            highs[i] = max(highs[i], float(values.max()))
    return {n: (float(lo), float(hi)) for n, lo, hi in zip(names, lows, highs, strict=True)}


def fake_quant_tap(ranges: dict[str, tuple[float, float]]) -> Tap:
    """A backbone tap putting a :class:`FakeQuant` over each point's range."""

    def tap(name, tensor):
        lo, hi = ranges[name]
        return FakeQuant(lo, hi, name=name + QUANT_SUFFIX)(tensor)

    return tap


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer by name (the input size may differ).

    A target layer missing from the source keeps its own weights only if it is a
    :class:`FakeQuant` (its range came with it); any other is an error.
    """
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            source_layer = source.get_layer(layer.name)
        except ValueError:
            if isinstance(layer, FakeQuant):
                continue
            raise ValueError(f"no layer {layer.name!r} in {source.name} to copy") from None
        layer.set_weights(source_layer.get_weights())
