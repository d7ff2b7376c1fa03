"""Run an exported .tflite over preprocessed inputs during training (scores and latency).

It uses the daemon's own interpreter loading and (de)quantisation from
:mod:`bin_daemon.model.classifier`, so training measures the model the way the bin runs it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bin_daemon.model.classifier import dequantize, load_interpreter_class, quantize
from bin_daemon.model.preprocess import load_image, to_model_input
from bin_daemon.site.head import reference_entry
from bin_daemon.training.split import Sample


class TFLiteModel:
    def __init__(self, model: bytes, threads: int = 2):
        interpreter_class, _ = load_interpreter_class()
        self.interpreter = interpreter_class(model_content=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def predict_one(self, model_input: np.ndarray) -> np.ndarray:
        """Scores for one model input (already preprocessed, real-valued or uint8 pixels)."""
        values = model_input.astype(np.float32)
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.floating):  # the float reference model
            tensor = values.astype(dtype)
        else:
            tensor = quantize(values, self.input["quantization"], dtype)
        self.interpreter.set_tensor(self.input["index"], tensor[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        return dequantize(raw, self.output["quantization"]).astype(np.float32)

    def embedding_one(self, model_input: np.ndarray) -> np.ndarray:
        """The pooled embedding (the model's second output, dequantised) of one model input."""
        self.predict_one(model_input)
        outputs = self.interpreter.get_output_details()
        if len(outputs) < 2:
            raise ValueError("the model has no embedding output")
        raw = self.interpreter.get_tensor(outputs[1]["index"])[0]
        return dequantize(raw, outputs[1]["quantization"]).astype(np.float32)

    def predict(self, model_inputs: np.ndarray) -> np.ndarray:
        return np.stack([self.predict_one(x) for x in model_inputs])

    def latency_ms(self, model_input: np.ndarray, runs: int = 100) -> tuple[float, float]:
        """(median, p95) milliseconds of one invocation, after two warm-up runs."""
        for _ in range(2):
            self.predict_one(model_input)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.predict_one(model_input)
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times)), float(np.percentile(times, 95))


def embedding_reference(
    model: TFLiteModel, model_path: Path, root: Path, samples: list[Sample], size: int
) -> dict:
    """The card's ``embedding_reference`` (the site head's centre) for the model at
    ``model_path`` (``model`` runs it): its embeddings of the clean training images
    ``samples``, read as the daemon reads a frame. Labels are the card's: the file beside it."""
    labels = model_path.with_name("labels.txt").read_text().split()
    embeddings = np.stack(
        [model.embedding_one(to_model_input(load_image(root / s.path), size)) for s in samples]
    )
    return reference_entry(model_path, embeddings, [s.label for s in samples], labels)
