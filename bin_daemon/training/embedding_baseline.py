"""Backbone comparison: the Coral MobileNetV1 embedding extractor with a trained head.

The "retrain the last layer on device" recipe: the uint8 extractor (already full-integer)
turns each image into 1024 values once; a softmax head is fitted on those (several
augmented views per training image). Its int8 accuracy is the extractor's int8 embedding
through the float head (the head is 6 K multiply-adds; quantising it changes nothing
measurable), and its latency is the extractor's.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from bin_daemon.model.metrics import report
from bin_daemon.model.preprocess import load_image
from bin_daemon.training.camera_effects import augment, bin_camera_view
from bin_daemon.training.data import load_for_training, load_model_inputs
from bin_daemon.training.split import limit_per_class, scan_dataset, stratified_split
from bin_daemon.training.tflite_eval import TFLiteModel

EXTRACTOR = "weights/coral/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def _embed(extractor: TFLiteModel, images: np.ndarray) -> np.ndarray:
    # The extractor's real-valued input is (pixel - 128) / 128, quantised with scale 1/128, zp 128.
    normalised = (images.astype(np.float32) - 128.0) / 128.0
    return extractor.predict(normalised).reshape(len(images), -1)


def run(
    data: Path,
    shared: Path,
    seed: int,
    views_per_image: int = 4,
    threads: int = 2,
    per_class_limit: int | None = None,
) -> dict:
    started = time.monotonic()
    model_bytes = (shared / EXTRACTOR).read_bytes()
    extractor = TFLiteModel(model_bytes, threads)
    split = limit_per_class(stratified_split(scan_dataset(data), seed), per_class_limit)
    labels = sorted({s.label for s in split})
    index = {label: i for i, label in enumerate(labels)}
    train = [s for s in split if s.subset == "train"]
    val = [s for s in split if s.subset == "val"]
    test = [s for s in split if s.subset == "test"]
    rng = np.random.default_rng(seed)
    train_images = load_for_training(data, train, short_side=258)
    x, y = [], []
    for _ in range(views_per_image):
        views = np.stack([augment(img, 224, rng) for img in train_images])
        x.append(_embed(extractor, views))
        y.append([index[s.label] for s in train])
    x_train, y_train = np.concatenate(x), np.concatenate(y)
    x_val = _embed(extractor, load_model_inputs(data, val, 224))
    y_val = np.array([index[s.label] for s in val])
    test_inputs = load_model_inputs(data, test, 224)
    x_test = _embed(extractor, test_inputs)
    y_test = np.array([index[s.label] for s in test])

    keras.utils.set_random_seed(seed)
    head = keras.Sequential(
        [
            keras.Input((x_train.shape[1],)),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(len(labels)),
        ]
    )
    head.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    head.fit(
        x_train,
        y_train,
        epochs=60,
        batch_size=64,
        validation_data=(x_val, y_val),
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=8, restore_best_weights=True)],
    )
    predicted = head.predict(x_test, verbose=0).argmax(1)
    test_report = report(labels, y_test, predicted)
    camera_rng = np.random.default_rng(seed + 7)
    camera_views = np.stack(
        [bin_camera_view(load_image(data / s.path), 224, camera_rng) for s in test]
    )
    camera = report(
        labels, y_test, head.predict(_embed(extractor, camera_views), verbose=0).argmax(1)
    )
    p50, p95 = extractor.latency_ms((test_inputs[0].astype(np.float32) - 128) / 128)
    return {
        "backbone": "mobilenet-v1-embedding + head",
        "int8_accuracy": test_report.accuracy,
        "int8_macro_f1": test_report.macro_f1,
        "int8_min_recall": test_report.min_recall,
        "float_accuracy": None,
        "bin_camera_accuracy": camera.accuracy,
        "size_bytes": len(model_bytes) + 4 * (x_train.shape[1] + 1) * len(labels),
        "latency_ms_p50": p50,
        "latency_ms_p95": p95,
        "seconds": round(time.monotonic() - started, 1),
        "note": "uint8 extractor (int8 end to end) + float softmax head on 4 augmented views/image",
    }
