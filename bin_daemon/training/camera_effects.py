"""What a bin camera does to a picture, as random augmentations and as fixed corruptions.

TrashNet photos are single objects on a white board under studio light. A bin camera sees
the item off-centre and rotated, under a wrong white balance, in dim light, with sensor
noise, motion or focus blur and JPEG artefacts. ``augment`` applies a random mix of those
to a training image; ``CORRUPTIONS`` are the same effects at fixed, moderate severities
with their own random parameters, used to measure the model under bin-camera conditions
(``bin_camera_view`` applies a random combination of them).

Images are RGB uint8 arrays. The pixel operations themselves (rotation, blur, JPEG) are
in ``bin_daemon.model.preprocess``, the project's one OpenCV module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bin_daemon.model import preprocess
from bin_daemon.model.preprocess import center_square, resize

Rng = np.random.Generator


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    return preprocess.rotate(image, degrees)


def white_balance(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return _clip(image.astype(np.float32) * gains[None, None, :])


def exposure(image: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    normalised = image.astype(np.float32) / 255.0
    return _clip(255.0 * np.power(normalised, gamma) * gain)


def sensor_noise(image: np.ndarray, sigma: float, rng: Rng) -> np.ndarray:
    return _clip(image.astype(np.float32) + rng.normal(0.0, sigma, image.shape))


def blur(image: np.ndarray, kernel: int, motion: bool, rng: Rng) -> np.ndarray:
    if not motion:
        return preprocess.gaussian_blur(image, kernel)
    return preprocess.motion_blur(image, kernel, rng.uniform(0, 180))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return preprocess.jpeg_roundtrip(image, quality)


def crop_box(image: np.ndarray, area: float, aspect: float, rng: Rng) -> np.ndarray:
    """A random crop of ``area`` (fraction of the image) with the given aspect, anywhere."""
    height, width = image.shape[:2]
    crop_w = round(np.sqrt(area * height * width * aspect))
    crop_h = round(np.sqrt(area * height * width / aspect))
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    return image[top : top + crop_h, left : left + crop_w]


def _oriented_square(image: np.ndarray, rng: Rng) -> np.ndarray:
    """The centre square, mirrored half the time and turned by a random multiple of 90°."""
    square = center_square(image)
    if rng.random() < 0.5:
        square = square[:, ::-1]
    return np.ascontiguousarray(np.rot90(square, k=int(rng.integers(0, 4))))


def augment(image: np.ndarray, size: int, rng: Rng, hard_probability: float = 0.0) -> np.ndarray:
    """A random bin-camera view of a training image, as the model's (size, size, 3) input.

    Most views are mild: each effect on its own chance, at everyday strength. With
    ``hard_probability`` the view is a hard one instead (``hard_view``).
    """
    if hard_probability and rng.random() < hard_probability:
        return hard_view(image, size, rng)
    square = _oriented_square(image, rng)
    if rng.random() < 0.5:
        square = rotate(np.ascontiguousarray(square), rng.uniform(-25, 25))
    view = crop_box(square, rng.uniform(0.55, 1.0), np.exp(rng.uniform(-0.2, 0.2)), rng)
    view = resize(np.ascontiguousarray(view), size)
    if rng.random() < 0.6:
        view = white_balance(view, rng.uniform(0.75, 1.25, 3).astype(np.float32))
    if rng.random() < 0.6:
        view = exposure(view, rng.uniform(0.55, 1.25), np.exp(rng.uniform(-0.35, 0.35)))
    if rng.random() < 0.25:
        view = blur(view, int(rng.choice([3, 5, 7])), bool(rng.random() < 0.5), rng)
    if rng.random() < 0.35:
        view = sensor_noise(view, rng.uniform(2, 14), rng)
    if rng.random() < 0.3:
        view = jpeg(view, int(rng.integers(25, 90)))
    return np.ascontiguousarray(view)


# Hard views: what the worst moments of a bin camera do, several effects at once. The
# strengths are drawn from ranges that reach past the fixed test corruptions below.
def _hard_white_balance(img: np.ndarray, rng: Rng) -> np.ndarray:
    shift = rng.uniform(0.1, 0.32)
    gains = np.array([1 + shift, 1.0, 1 - shift], np.float32) * rng.uniform(0.95, 1.05, 3)
    return white_balance(img, gains if rng.random() < 0.5 else gains[::-1].copy())


def _hard_low_light(img: np.ndarray, rng: Rng) -> np.ndarray:
    dim = exposure(img, rng.uniform(0.28, 0.7), rng.uniform(1.0, 1.5))
    return sensor_noise(dim, rng.uniform(3, 10), rng)


HARD_EFFECTS: dict[str, Callable[[np.ndarray, Rng], np.ndarray]] = {
    "white_balance": _hard_white_balance,
    "low_light": _hard_low_light,
    "noise": lambda img, rng: sensor_noise(img, rng.uniform(6, 20), rng),
    "blur": lambda img, rng: blur(img, int(rng.choice([5, 7, 9, 11])), rng.random() < 0.5, rng),
    "jpeg": lambda img, rng: jpeg(img, int(rng.integers(12, 45))),
}


def hard_view(image: np.ndarray, size: int, rng: Rng) -> np.ndarray:
    """Off-centre, rotated framing plus two or three strong effects, as model input."""
    square = rotate(_oriented_square(image, rng), rng.uniform(-45, 45))
    view = crop_box(square, rng.uniform(0.45, 0.8), np.exp(rng.uniform(-0.15, 0.15)), rng)
    view = resize(np.ascontiguousarray(view), size)
    for name in rng.choice(list(HARD_EFFECTS), size=int(rng.integers(2, 4)), replace=False):
        view = HARD_EFFECTS[name](view, rng)
    return np.ascontiguousarray(view)


# Test-time corruptions: one effect each, moderate severity, parameters drawn per image.
def _wb_off(img: np.ndarray, rng: Rng) -> np.ndarray:
    warm = np.array([1.25, 1.0, 0.75], np.float32)
    return white_balance(img, warm if rng.random() < 0.5 else warm[::-1].copy())


def _low_light(img: np.ndarray, rng: Rng) -> np.ndarray:
    return sensor_noise(exposure(img, rng.uniform(0.35, 0.5), 1.3), 6.0, rng)


def _noise(img: np.ndarray, rng: Rng) -> np.ndarray:
    return sensor_noise(img, 14.0, rng)


def _blur(img: np.ndarray, rng: Rng) -> np.ndarray:
    return blur(img, 9, bool(rng.random() < 0.5), rng)


def _jpeg(img: np.ndarray, rng: Rng) -> np.ndarray:
    return jpeg(img, 20)


def _framing(img: np.ndarray, rng: Rng) -> np.ndarray:
    square = rotate(np.ascontiguousarray(center_square(img)), rng.uniform(-40, 40))
    return crop_box(square, 0.6, 1.0, rng)


CORRUPTIONS: dict[str, Callable[[np.ndarray, Rng], np.ndarray]] = {
    "white_balance": _wb_off,
    "low_light": _low_light,
    "noise": _noise,
    "blur": _blur,
    "jpeg": _jpeg,
    "framing": _framing,
}


# Seeds of the bin-camera views, offset from the split seed: the test split's (reported) and
# the validation split's (chosen by). Training and `compare` draw the same views from them.
TEST_VIEWS_SEED_OFFSET = 7
VAL_VIEWS_SEED_OFFSET = 11


def bin_camera_view(image: np.ndarray, size: int, rng: Rng) -> np.ndarray:
    """The test image as a bin camera might show it: framing plus two or three other effects."""
    view = resize(np.ascontiguousarray(_framing(image, rng)), size)
    names = [n for n in CORRUPTIONS if n != "framing"]
    for name in rng.choice(names, size=int(rng.integers(2, 4)), replace=False):
        view = CORRUPTIONS[name](view, rng)
    return np.ascontiguousarray(view)


def corrupted_view(image: np.ndarray, name: str, size: int, rng: Rng) -> np.ndarray:
    """The test image with one named corruption, as the model's input."""
    if name == "framing":
        return np.ascontiguousarray(resize(np.ascontiguousarray(_framing(image, rng)), size))
    base = resize(np.ascontiguousarray(center_square(image)), size)
    return np.ascontiguousarray(CORRUPTIONS[name](base, rng))
