"""A probe for issue 15's quantisation-aware fine-tuning, not part of `make bench`: does the
TFLite converter (TF 2.21) honour fake-quant ranges placed in a Keras 3 model?

    python bench/qat_probe.py          # needs the [train] extra; about 10 s

`tensorflow-model-optimization` quantises tf_keras (Keras 2) models only, and this project's
models are Keras 3, so QAT here means inserting ``tf.quantization.fake_quant_with_min_max_vars``
on activations by hand. This builds a tiny conv net with fake-quant layers at known ranges,
converts it to full int8 exactly as ``bin_daemon.training.export`` does (uint8 in and out,
a representative set), and prints each fake-quantised tensor's scale in the .tflite beside the
scale its fake-quant range implies (``(max - min) / 255``). Equal scales: the converter used the
trained ranges, not the representative set's. It exits 1 if any differs or a float tensor is
left.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers


class FakeQuant(layers.Layer):
    """8-bit fake quantisation of an activation over a trainable range [lo, hi]."""

    def __init__(self, lo: float, hi: float, **kwargs):
        super().__init__(**kwargs)
        self.initial = (lo, hi)

    def build(self, shape):
        lo, hi = self.initial
        self.lo = self.add_weight(shape=(), initializer=keras.initializers.Constant(lo), name="lo")
        self.hi = self.add_weight(shape=(), initializer=keras.initializers.Constant(hi), name="hi")

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8)


RANGES = {"after_relu6": (0.0, 6.0), "pooled": (0.0, 3.0), "logits": (-10.0, 10.0)}


def tiny_model() -> keras.Model:
    pixels = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0)(pixels)
    x = layers.ReLU(6.0)(layers.Conv2D(8, 3, padding="same")(x))
    x = FakeQuant(*RANGES["after_relu6"], name="after_relu6")(x)
    x = FakeQuant(*RANGES["pooled"], name="pooled")(layers.GlobalAveragePooling2D()(x))
    x = FakeQuant(*RANGES["logits"], name="logits")(layers.Dense(4)(x))
    return keras.Model(pixels, layers.Softmax()(x))


def main() -> int:
    rng = np.random.default_rng(0)
    model = tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    images = rng.uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    model.fit(images, rng.integers(0, 4, 64), epochs=1, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images[:16])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    tensors = interpreter.get_tensor_details()
    floats = [t["name"] for t in tensors if t["dtype"] == np.float32]
    scales = {round(t["quantization"][0], 6) for t in tensors if t["quantization"][0]}
    ok = not floats
    for name in RANGES:
        # the trained range, which fit() may have moved a little
        trained = [float(w) for w in model.get_layer(name).get_weights()]
        expected = round((trained[1] - trained[0]) / 255, 6)
        found = expected in scales
        ok &= found
        print(f"{name:12s} range {trained[0]:+.3f}..{trained[1]:+.3f}: scale {expected} "
              f"{'in the .tflite' if found else 'NOT in the .tflite'}")  # fmt: skip
    print(f"float tensors left: {len(floats)}; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
