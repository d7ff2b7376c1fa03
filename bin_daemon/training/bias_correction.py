"""Bias correction for int8 weight rounding (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.2).

The converter rounds each convolution's kernel per output channel to 255 symmetric levels.
The rounding error of a kernel is fixed, so each output channel of the int8 model is off by
an amount whose mean over the data is ``sum(rounding error * mean input)``: a systematic
shift that accumulates through the network. Taking the fold models apart showed that this
rounding, not the activations' 8-bit grid, is where the int8 model lost against float
(docs/TRAINING.md). Here each convolution's bias is moved by minus that expected error, with
each input channel's mean measured on the representative set (the images the converter
calibrates on), so the int8 model's outputs are right on average. No training; the float
network is untouched (the corrected copy is only exported).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

WEIGHT_LEVELS = 127  # int8 weights are symmetric: -127..127, zero point 0


def int8_rounded(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """``kernel`` as the converter stores it, back in float: one scale per output channel
    (Conv2D ``(kh, kw, in, out)``: per ``out``; DepthwiseConv2D ``(kh, kw, C, 1)``: per ``C``)."""
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    largest = np.abs(kernel).max(axis=axes, keepdims=True)
    scale = np.where(largest > 0, largest / WEIGHT_LEVELS, 1.0)
    return (np.round(kernel / scale) * scale).astype(kernel.dtype)


def _convolutions(model: keras.Model) -> list[layers.Layer]:
    return [
        layer
        for layer in model.layers
        if isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D) and layer.use_bias
    ]


def input_means(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> list[np.ndarray]:
    """Each convolution's mean input per channel over ``images`` (uint8 model inputs)."""
    convolutions = _convolutions(model)
    probe = keras.Model(model.input, [layer.input for layer in convolutions])
    sums = [np.zeros(layer.input.shape[-1]) for layer in convolutions]
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].astype(np.float32)
        for total, values in zip(sums, probe(batch, training=False), strict=True):
            total += np.asarray(values).sum(axis=(0, 1, 2))
    pixels = [len(images) * np.prod(layer.input.shape[1:3]) for layer in convolutions]
    return [total / count for total, count in zip(sums, pixels, strict=True)]


def correct_biases(model: keras.Model, images: np.ndarray) -> dict:
    """Move every convolution's bias in ``model`` (in place) by minus the mean error its
    int8-rounded kernel makes on ``images``; returns a summary for the training record."""
    convolutions = _convolutions(model)
    shifts = []
    for layer, mean in zip(convolutions, input_means(model, images), strict=True):
        kernel, bias = layer.get_weights()
        depthwise = isinstance(layer, layers.DepthwiseConv2D)
        error = int8_rounded(kernel, depthwise) - kernel
        if depthwise:  # (kh, kw, C, 1): channel c reads only input channel c
            shift = error[..., 0].sum(axis=(0, 1)) * mean
        else:  # (kh, kw, in, out)
            shift = np.einsum("hwio,i->o", error, mean)
        layer.set_weights([kernel, (bias - shift).astype(bias.dtype)])
        shifts.append(np.abs(shift).max())
    return {
        "layers": len(convolutions),
        "largest_shift": round(float(max(shifts, default=0.0)), 5),
        "images": len(images),
    }
