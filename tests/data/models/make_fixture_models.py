"""Regenerate the tiny TFLite files used by the classifier's error-path tests.

    python tests/data/models/make_fixture_models.py   (needs the [train] extra: TensorFlow)

They are NOT waste classifiers: random weights, only their tensor shapes and types matter.
  tiny_uint8_32px.tflite   full-int8, uint8 (1, 32, 32, 3) -> uint8 (1, 6): right types,
                           wrong input size for a card that says 224 (and a valid model for
                           the quantisation tests)
  tiny_float_32px.tflite   float32 input and output: a model the daemon must refuse
  tiny_uint8_32px_embedding.tflite      the uint8 one with its pooled features (1, 4) as a
                           second output (bin_daemon.training.embedding_output), like the
                           shipped model
  tiny_uint8_32px_bad_embedding.tflite  a second output of the wrong shape (the conv
                           features, (1, 15, 15, 4)): a model the daemon must refuse
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

HERE = Path(__file__).resolve().parent


def build(size: int, classes: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = tf.keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def convert(model: tf.keras.Model, size: int, *, integer: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if integer:
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(16):
                yield [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


if __name__ == "__main__":
    model = build(32, 6)
    (HERE / "tiny_uint8_32px.tflite").write_bytes(convert(model, 32, integer=True))
    (HERE / "tiny_float_32px.tflite").write_bytes(convert(model, 32, integer=False))
    from tensorflow.lite.tools import flatbuffer_utils

    from bin_daemon.training.embedding_output import add_embedding_output, pooled_tensor

    uint8 = (HERE / "tiny_uint8_32px.tflite").read_bytes()
    (HERE / "tiny_uint8_32px_embedding.tflite").write_bytes(add_embedding_output(uint8)[0])
    bad = flatbuffer_utils.convert_bytearray_to_object(bytearray(uint8))
    graph = bad.subgraphs[0]
    pooled = pooled_tensor(bad)
    conv = next(op for op in graph.operators if pooled in op.outputs).inputs[0]
    graph.outputs = np.array([graph.outputs[0], conv], dtype=np.int32)
    (HERE / "tiny_uint8_32px_bad_embedding.tflite").write_bytes(
        bytes(flatbuffer_utils.convert_object_to_bytearray(bad))
    )
    print("wrote", *sorted(p.name for p in HERE.glob("*.tflite")))
