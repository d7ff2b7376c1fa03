"""Site copies of a test split and the shipped model's embeddings of them (experiments only).

``site_view`` is ONE fixed transform, the same for every image, standing for one bin's
site: the studio's white board replaced by a dark grey flap (near-white background pixels
masked smoothly, their shading kept), a warm colour cast, slight defocus and the camera's
JPEG. The random camera-conditions copy is ``camera_effects.bin_camera_view``.

``Embedder`` reads, from an unmodified int8 ``.tflite``, the dequantised pooled features
that feed the final fully-connected layer (what ``Prediction.embedding`` carries) together
with the model's probabilities, by keeping the interpreter's intermediate tensors. It is
for experiments on models exported before the two-output model; the daemon reads the
model's second output instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bin_daemon.model.classifier import load_interpreter_class
from bin_daemon.model.preprocess import (
    decode_image,
    encode_jpeg,
    gaussian_blur_sigma,
    open_mask,
    to_model_input,
)

# The site: a dark grey flap, a warm cast, slight defocus, the camera's JPEG.
FLAP_GREY = 64.0
WARM_GAINS = np.array([1.25, 1.0, 0.72], np.float32)
DEFOCUS_SIGMA = 2.2  # pixels at TrashNet's 512 x 384
JPEG_QUALITY = 50


def background_mask(image: np.ndarray) -> np.ndarray:
    """Float (H, W) in 0..1: how much each pixel is the studio's near-white, unsaturated board."""
    rgb = image.astype(np.float32)
    lo = rgb.min(axis=2)
    hi = rgb.max(axis=2)
    saturation = (hi - lo) / np.maximum(hi, 1.0)
    bright = np.clip((lo - 130.0) / 40.0, 0.0, 1.0)
    grey = np.clip((0.28 - saturation) / 0.12, 0.0, 1.0)
    mask = bright * grey
    # Smooth: an opening removes specular highlights on the item, the blur feathers the edge.
    return gaussian_blur_sigma(open_mask(mask, 9), 4.0)


def site_view(image: np.ndarray) -> np.ndarray:
    """The consistent site transform of one RGB uint8 image (same parameters for every image)."""
    rgb = image.astype(np.float32)
    mask = background_mask(image)[:, :, None]
    luminance = rgb.mean(axis=2, keepdims=True)
    shading = luminance / max(float(np.percentile(luminance, 90)), 1.0)
    flap = FLAP_GREY * np.clip(shading, 0.4, 1.2)
    out = rgb * (1.0 - mask) + flap * mask
    out = out * WARM_GAINS[None, None, :]
    out = gaussian_blur_sigma(np.clip(out, 0, 255).astype(np.uint8), DEFOCUS_SIGMA)
    return decode_image(encode_jpeg(out, JPEG_QUALITY), "site view")


class Embedder:
    """Pooled features (dequantised, float32) and probabilities of an int8 classifier."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        interpreter_class, _ = load_interpreter_class()
        module = __import__(interpreter_class.__module__, fromlist=["OpResolverType"])
        self.interpreter = interpreter_class(
            model_path=str(model_path),
            num_threads=threads,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self.interpreter.allocate_tensors()
        ops = self.interpreter._get_ops_details()
        fc = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"][-1]
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        self._pool = int(fc["inputs"][0])
        self._pool_q = details[self._pool]["quantization"]
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._input, self.size = inp["index"], int(inp["shape"][1])
        self._output, self._output_q = out["index"], out["quantization"]

    def __call__(self, model_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.set_tensor(self._input, model_input[None])
        self.interpreter.invoke()
        scale, zero = self._pool_q
        pooled = scale * (self.interpreter.get_tensor(self._pool)[0].astype(np.float32) - zero)
        scale, zero = self._output_q
        probs = scale * (self.interpreter.get_tensor(self._output)[0].astype(np.float32) - zero)
        return pooled.astype(np.float32), probs / max(float(probs.sum()), 1e-9)

    def embed_inputs(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self(x) for x in inputs]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    return to_model_input(image, size)
