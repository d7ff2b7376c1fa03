"""Full-integer TFLite export: int8 weights and activations, uint8 pixels in, uint8 scores out."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from bin_daemon.training.embedding_output import add_embedding_output


def inference_model(features: keras.Model, head: layers.Layer, temperature: float) -> keras.Model:
    """Pixels -> calibrated probabilities: softmax(logits / temperature)."""
    logits = head(features.output)
    scaled = layers.Rescaling(1.0 / temperature, name="temperature")(logits)
    probabilities = layers.Softmax(name="probabilities")(scaled)
    return keras.Model(features.input, probabilities, name="waste_classifier")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """The converter prints a long 'Saved artifact' block straight to fd 1: hide it."""
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def to_int8_tflite(model: keras.Model, representative: np.ndarray) -> bytes:
    """Convert with a representative set of model inputs (N, S, S, 3) uint8.

    The result has two outputs: the probabilities, then the pooled embedding that feeds the
    classifier layer (:mod:`bin_daemon.training.embedding_output`; the daemon's site store
    reads it). Adding it after conversion keeps the order fixed and the probabilities
    exactly those of the one-output model.
    """
    return add_embedding_output(_to_int8_tflite(model, representative))[0]


def _to_int8_tflite(model: keras.Model, representative: np.ndarray) -> bytes:

    def samples() -> Iterator[list[np.ndarray]]:
        for i, image in enumerate(representative):
            yield [(pin_input_range(image) if i == 0 else image)[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with _quiet_stdout(), warnings.catch_warnings():
        # harmless: the uint8 input's range comes from the representative set
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def pin_input_range(image: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with one black and one white pixel: the converter takes the uint8
    input's quantisation from the range the representative set shows, and the daemon feeds
    raw pixels 0..255. Photos of items on a white board nearly always show both; a small or
    dark set may not (the input would then cover 0..254, and the daemon refuses the model)."""
    pinned = image.copy()
    pinned[0, 0], pinned[0, 1] = 0, 255
    return pinned


def to_float_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with _quiet_stdout():
        return converter.convert()
