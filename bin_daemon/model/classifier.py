"""The waste classifier: an int8 TFLite model loaded once. The only module importing an interpreter.

A model is a folder with ``waste_classifier.tflite`` (the card's ``model_file``),
``labels.txt`` and ``model_card.json``. Loading checks everything it can before the first
frame and refuses with one :class:`ModelError` line naming the file and what was expected.
Pixels reach the model through :func:`bin_daemon.model.preprocess.to_model_input`, exactly as in
training; the model's input is raw RGB pixels 0..255 (normalisation is inside the model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from bin_daemon.errors import ModelError
from bin_daemon.model import preprocess

log = logging.getLogger(__name__)

MODEL_FILE = "waste_classifier.tflite"
LABELS_FILE = "labels.txt"
CARD_FILE = "model_card.json"
TFLITE_MAGIC = b"TFL3"
TOP_K = 3
TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top: list[tuple[str, float]]
    """The best TOP_K (label, probability) pairs, most probable first."""
    scores: np.ndarray
    """All probabilities (float), in label order."""
    preprocess_ms: float = 0.0
    """Time spent cropping, resizing and quantising the frame (part of a classify call)."""
    embedding: np.ndarray | None = None
    """The model's second output, dequantised: float32 (D,) pooled features before the
    classifier layer, NOT normalised. None for a model without that output."""


def load_interpreter_class() -> tuple[type, str]:
    """The TFLite Interpreter class: ai-edge-litert first, tflite-runtime as the fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError as error:
        raise ModelError(
            "no TFLite interpreter: install ai-edge-litert (64-bit OS) or tflite-runtime"
        ) from error


def _reference_kernel_options(interpreter_class: type) -> dict[str, Any]:
    """Interpreter arguments for TFLite's portable reference kernels: no XNNPACK, no SIMD."""
    module = importlib.import_module(interpreter_class.__module__)
    resolver = module.OpResolverType.BUILTIN_REF
    return {"experimental_op_resolver_type": resolver}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quantize(values: np.ndarray, quantization: tuple[float, int], dtype: Any) -> np.ndarray:
    """Real values -> the tensor's integer type: ``round(x / scale + zero_point)``, clipped.

    A tensor without quantisation parameters (scale 0) takes the values as they are.
    """
    scale, zero_point = quantization
    info = np.iinfo(dtype)
    if scale == 0:
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    q = np.rint(values.astype(np.float64) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    """The tensor's integers -> real values: ``scale * (q - zero_point)`` (as pycoral does)."""
    scale, zero_point = quantization
    if scale == 0 or not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float64)
    return scale * (values.astype(np.int64) - zero_point)


class Classifier:
    """One loaded model. ``classify(rgb)`` is cheap; construction does the checking."""

    def __init__(
        self,
        *,
        interpreter: Any,
        labels: list[str],
        card: dict[str, Any],
        model_path: Path,
        sha256: str,
        runtime: str,
    ) -> None:
        self._interpreter = interpreter
        self.labels = labels
        self.card = card
        self.model_path = model_path
        self.sha256 = sha256
        self.runtime = runtime
        self.version = str(card.get("version", "unknown"))
        threshold = card.get("unsure_threshold")
        self.card_unsure_threshold = float(threshold) if threshold is not None else None
        inp = interpreter.get_input_details()[0]
        outputs = interpreter.get_output_details()
        out = outputs[0]
        self._input_index = inp["index"]
        self._input_dtype = inp["dtype"]
        self._input_q = tuple(inp["quantization"])
        levels = np.arange(256, dtype=np.uint8)
        self._pixels_are_input = self._input_dtype == np.uint8 and np.array_equal(
            quantize(levels.astype(np.float32), self._input_q, self._input_dtype), levels
        )
        """Input quantisation maps every pixel value 0..255 to itself: feed the pixels as they are."""
        self._output_index = out["index"]
        self._output_q = tuple(out["quantization"])
        self.input_size = int(inp["shape"][1])
        embedding = outputs[1] if len(outputs) > 1 else None
        self._embedding_index = embedding["index"] if embedding is not None else None
        self._embedding_q = tuple(embedding["quantization"]) if embedding is not None else (0, 0)
        self.embedding_size: int | None = (
            int(embedding["shape"][-1]) if embedding is not None else None
        )
        """D of ``Prediction.embedding``; None when the model has no embedding output."""

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        num_threads: int = 2,
        on_sha256_mismatch: str = "refuse",
        reference_kernels: bool = False,
    ) -> Classifier:
        """Load and check the model in ``model_dir`` (a symlink such as ``current`` is resolved).

        ``reference_kernels`` runs TFLite's portable reference kernels (``BUILTIN_REF``) instead
        of XNNPACK: about 50 times slower, but plain C++ integer arithmetic with no
        CPU-specific code, so x86 and arm64 can be compared to the last quantisation step
        (XNNPACK's and the optimised builtin kernels round differently on each CPU).
        """
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")
        if on_sha256_mismatch not in ("refuse", "warn"):
            raise ValueError(
                f"on_sha256_mismatch must be 'refuse' or 'warn', got {on_sha256_mismatch!r}"
            )
        folder = Path(model_dir)
        if not folder.is_dir():
            raise ModelError(
                f"{folder}: model folder not found (expected {MODEL_FILE}, "
                f"{LABELS_FILE} and {CARD_FILE} in it)"
            )
        folder = folder.resolve()
        card = read_card(folder / CARD_FILE)
        model_path = folder / str(card.get("model_file") or MODEL_FILE)
        labels = _read_labels(folder / LABELS_FILE)
        card_labels = card.get("labels")
        if card_labels is not None and list(card_labels) != labels:
            raise ModelError(
                f"{folder / LABELS_FILE}: labels {labels} differ from the card's {card_labels}"
            )
        data = _read_model_bytes(model_path)
        sha256 = hashlib.sha256(data).hexdigest()
        expected = str(card.get("sha256", "")).lower()
        if expected != sha256:
            message = (
                f"{model_path}: sha256 {sha256[:12]}... does not match the card's "
                f"{expected[:12] or '(none)'}... ({folder / CARD_FILE})"
            )
            if on_sha256_mismatch == "refuse":
                raise ModelError(message + "; refusing a model its card does not describe")
            log.warning("%s; using it anyway (model.on_sha256_mismatch: warn)", message)
        interpreter_class, runtime = load_interpreter_class()
        try:
            with _filtered_stderr(_XNNPACK_NOTICE):
                options = _reference_kernel_options(interpreter_class) if reference_kernels else {}
                interpreter = interpreter_class(
                    model_path=str(model_path), num_threads=num_threads, **options
                )
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"{model_path}: the interpreter cannot load it ({error})") from error
        _check_tensors(interpreter, model_path, labels, card)
        classifier = cls(
            interpreter=interpreter,
            labels=labels,
            card=card,
            model_path=model_path,
            sha256=sha256,
            runtime=runtime,
        )
        log.debug("loaded %s (%s, %d threads)", model_path, runtime, num_threads)
        return classifier

    # -- inference -------------------------------------------------------------------------

    tta: str = "none"
    """Test-time augmentation (config ``model.tta``): "none", or "flip": the frame and its
    mirror image each classified, probabilities averaged (two invokes per item)."""

    class_bias: Mapping[str, float] = MappingProxyType({})
    """Config ``model.class_bias``: added to these labels' log-probabilities after the model
    (a prior shift; :func:`shift_priors`). Empty: the model's own probabilities."""

    def classify(self, rgb: np.ndarray) -> Prediction:
        """Label one RGB uint8 image of any size, with the test-time augmentation ``tta`` and
        the prior shift ``class_bias``."""
        if self.tta == "none":
            prediction = self.classify_once(rgb)
        elif self.tta == "flip":
            plain, flipped = self.classify_once(rgb), self.classify_once(rgb[:, ::-1])
            prediction = rescored(plain, (plain.scores + flipped.scores) / 2, self.labels)
            prediction = dataclasses.replace(
                prediction, preprocess_ms=plain.preprocess_ms + flipped.preprocess_ms
            )
        else:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if not self.class_bias:
            return prediction
        return rescored(
            prediction, shift_priors(prediction.scores, self.labels, self.class_bias), self.labels
        )

    def classify_once(self, rgb: np.ndarray) -> Prediction:
        """Label one RGB uint8 image of any size (it is cropped and resized like in training)."""
        started = time.perf_counter()
        pixels = preprocess.to_model_input(rgb, self.input_size)
        if self._pixels_are_input:  # the usual uint8 model: skip a float round trip (~1 ms)
            tensor = pixels
        else:
            tensor = quantize(pixels.astype(np.float32), self._input_q, self._input_dtype)
        preprocess_ms = (time.perf_counter() - started) * 1000
        self._interpreter.set_tensor(self._input_index, tensor[np.newaxis])
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output_index)[0]
        scores = dequantize(raw, self._output_q)
        embedding = None
        if self._embedding_index is not None:  # the same invoke(): no second inference
            raw_embedding = self._interpreter.get_tensor(self._embedding_index)[0]
            embedding = dequantize(raw_embedding, self._embedding_q).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        top = [(self.labels[i], float(scores[i])) for i in order[:TOP_K]]
        return Prediction(
            label=top[0][0],
            confidence=top[0][1],
            top=top,
            scores=scores,
            preprocess_ms=preprocess_ms,
            embedding=embedding,
        )


def rescored(prediction: Prediction, scores: np.ndarray, labels: Sequence[str]) -> Prediction:
    """``prediction`` with other probabilities ``scores`` (in ``labels`` order): its label,
    confidence and top list follow them."""
    order = np.argsort(-scores, kind="stable")
    top = [(labels[i], float(scores[i])) for i in order[:TOP_K]]
    return dataclasses.replace(
        prediction, label=top[0][0], confidence=top[0][1], top=top, scores=scores
    )


def shift_priors(
    scores: np.ndarray, labels: Sequence[str], bias: Mapping[str, float]
) -> np.ndarray:
    """``scores`` with ``bias[label]`` added to each listed label's log-probability,
    renormalised: from ``softmax(z)`` exactly ``softmax(z + b)``, without the logits. A
    positive bias makes a label win more often (its recall up, its precision down)."""
    factors = np.exp(np.array([float(bias.get(label, 0.0)) for label in labels]))
    shifted = np.asarray(scores, np.float64) * factors
    total = float(shifted.sum())
    return shifted / total if total > 0 else np.asarray(scores, np.float64)


_XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def _filtered_stderr(drop: bytes) -> Iterator[None]:
    """Hide one known, harmless line the interpreter's C++ code writes to stderr (fd 2).

    Everything else it writes is passed on when the block ends. If the process dies inside
    the block, its exit status still tells (docs/TOOLCHAIN.md: aborting models).
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            rest = [line for line in capture.read().splitlines(keepends=True) if drop not in line]
            if rest:
                os.write(2, b"".join(rest))


def read_card(path: Path) -> dict[str, Any]:
    """The model card at ``path`` as a dict; :class:`ModelError` naming the file if it is unusable."""
    if not path.is_file():
        raise ModelError(f"{path}: model card missing (every model folder has a {CARD_FILE})")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: model card is not valid JSON ({error})") from error
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model card must be a JSON object")
    threshold = card.get("unsure_threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise ModelError(
            f"{path}: unsure_threshold must be a number between 0 and 1, got {threshold!r}"
        )
    return card


def _read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: labels file missing (one label per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: cannot read labels ({error})") from error
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ModelError(f"{path}: no labels in it (expected one label per line)")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{path}: a label is listed twice")
    return labels


def _read_model_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file missing") from None
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model ({error.strerror or error})") from error
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise ModelError(f"{path}: not a TFLite model (no '{TFLITE_MAGIC.decode()}' at byte 4)")
    return data


def _check_tensors(interpreter: Any, path: Path, labels: list[str], card: dict[str, Any]) -> None:
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) not in (1, 2):
        raise ModelError(
            f"{path}: expected 1 input and 1 output tensor (2 with the embedding), found "
            f"{len(inputs)} and {len(outputs)}"
        )
    _check_embedding(outputs[1] if len(outputs) == 2 else None, path, card)
    inp, out = inputs[0], outputs[0]
    shape = tuple(int(d) for d in inp["shape"])
    card_size = (card.get("input") or {}).get("size")
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
        raise ModelError(f"{path}: input shape {shape}, expected (1, S, S, 3) RGB")
    sizes = card_size if isinstance(card_size, list) else [card_size]
    sizes = [size for size in sizes if isinstance(size, int)]
    if sizes and shape[1] not in sizes:
        said = " or ".join(f"{size}x{size}" for size in sizes)
        raise ModelError(f"{path}: input is {shape[1]}x{shape[2]} but its card says {said}")
    if inp["dtype"] not in (np.uint8, np.int8):
        raise ModelError(
            f"{path}: input type {np.dtype(inp['dtype']).name}, expected uint8 or int8 "
            "(a full-integer quantised model)"
        )
    scale, zero_point = inp["quantization"]
    if scale:
        info = np.iinfo(inp["dtype"])
        low, high = scale * (info.min - zero_point), scale * (info.max - zero_point)
        if low > 0.5 or high < 254.5:
            raise ModelError(
                f"{path}: input quantisation (scale {scale:.6g}, zero point {zero_point}) covers "
                f"{low:.3g}..{high:.3g}, expected raw pixels 0..255 (normalisation inside the model)"
            )
    out_shape = tuple(int(d) for d in out["shape"])
    if len(out_shape) != 2 or out_shape[0] != 1:
        raise ModelError(f"{path}: output shape {out_shape}, expected (1, N)")
    if out_shape[1] != len(labels):
        raise ModelError(
            f"{path}: the model outputs {out_shape[1]} scores but {LABELS_FILE} has "
            f"{len(labels)} labels"
        )
    if out["dtype"] not in (np.uint8, np.int8, np.float32):
        raise ModelError(
            f"{path}: output type {np.dtype(out['dtype']).name}, expected uint8, int8 or float32"
        )


def _check_embedding(out: dict[str, Any] | None, path: Path, card: dict[str, Any]) -> None:
    """The optional second output: the pooled embedding, shape (1, D), as the card says."""
    described = card.get("embedding")
    if out is None:
        if isinstance(described, dict):
            raise ModelError(
                f"{path}: its card describes an embedding output "
                f"({described.get('tensor', '?')}) but the model has only one output; "
                "re-export it with bin_daemon.training.embedding_output"
            )
        return
    shape = tuple(int(d) for d in out["shape"])
    size = described.get("size") if isinstance(described, dict) else None
    if len(shape) != 2 or shape[0] != 1 or shape[1] < 1:
        raise ModelError(
            f"{path}: output 1 (the embedding, {out['name']}) has shape {shape}, "
            f"expected (1, D){f' with D = {size}' if size else ''}: the pooled features "
            "before the classifier layer"
        )
    if isinstance(size, int) and shape[1] != size:
        raise ModelError(
            f"{path}: output 1 (the embedding, {out['name']}) has {shape[1]} values but its "
            f"card says embedding.size {size}"
        )
    if out["dtype"] not in (np.uint8, np.int8, np.float32):
        raise ModelError(
            f"{path}: the embedding output's type is {np.dtype(out['dtype']).name}, expected "
            "int8, uint8 or float32"
        )
