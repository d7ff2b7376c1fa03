"""Run an exported .tflite over preprocessed inputs during training (scores and latency)."""

from __future__ import annotations

import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class TFLiteModel:
    def __init__(self, model: bytes, threads: int = 2):
        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _quantise(self, image: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if not scale:
            return image[None].astype(dtype)
        info = np.iinfo(dtype)
        q = np.round(image.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)[None]

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self._quantise(image))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero = self.output["quantization"]
        if not scale:
            return raw.astype(np.float32)
        return (scale * (raw.astype(np.int64) - zero)).astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.predict_one(image) for image in images])

    def latency_ms(self, image: np.ndarray, runs: int = 100) -> tuple[float, float]:
        """(median, p95) milliseconds of one classification, after two warm-up runs."""
        for _ in range(2):
            self.predict_one(image)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.predict_one(image)
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times)), float(np.percentile(times, 95))
