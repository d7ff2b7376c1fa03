"""How pixels reach the model: decoding and the input transform; the project's image adapter.

The daemon, ``classify``, ``evaluate`` and training all call these functions, so the model
sees a camera frame exactly the way it saw its training images. This is the only module
that imports OpenCV: the pixel operations training's camera effects need (rotation, blur,
a JPEG round trip, shrinking) are at the end, so that training uses the same library
through the same door.

The transform is deliberately simple: take the largest centred square, resize it to the
model's input size with area interpolation, keep RGB uint8. Normalisation lives inside the
model (a Rescaling layer), so the Pi feeds raw pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bin_daemon import MAX_IMAGE_PIXELS
from bin_daemon.errors import ImageError


def decode_image(data: bytes, source: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, ...) into an RGB ``uint8`` array (H, W, 3).

    Greyscale becomes three equal channels, alpha is dropped, 16-bit is scaled to 8-bit.
    Raises :class:`ImageError` naming ``source`` for anything that is not a decodable image.
    """
    if not data:
        raise ImageError(f"{source}: empty file (0 bytes), not an image")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        if "MAX_IMAGE_PIXELS" in str(error):
            raise ImageError(
                f"{source}: larger than the {MAX_IMAGE_PIXELS // 1_000_000} MP this program "
                "accepts (refused before decoding)"
            ) from None
        raise ImageError(f"{source}: not a decodable image ({error.err or error})") from None
    if image is None or image.size == 0:
        raise ImageError(f"{source}: not a decodable image (truncated, corrupt or unknown format)")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{source}: {image.shape[1]}x{image.shape[0]} pixels is larger than the "
            f"{MAX_IMAGE_PIXELS // 1_000_000} MP this program accepts"
        )
    return to_rgb8(image, source)


def to_rgb8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Normalise an OpenCV-decoded array (BGR/BGRA/grey, 8 or 16 bit) to RGB uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"{source}: unsupported number of channels ({channels})")


def load_image(path: str | Path) -> np.ndarray:
    """Read and decode an image file into RGB uint8; :class:`ImageError` if it cannot be."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from error
    return decode_image(data, str(path))


def encode_jpeg(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (for the spool of captured frames)."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ImageError("could not encode frame as JPEG")
    return encoded.tobytes()


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image (a view, no copy)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return image[top : top + side, left : left + side]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size) with area interpolation when shrinking, linear when growing."""
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def to_model_input(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """The model's input for one RGB uint8 image: centred square, resized, (size, size, 3) uint8."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ImageError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}"
        )
    return np.ascontiguousarray(resize(center_square(image_rgb), size))


def shrink_longer_side(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image scaled down (area interpolation) so its longer side is at most ``max_side``;
    the image itself when it already is."""
    height, width = image_rgb.shape[:2]
    longer = max(height, width)
    if longer <= max_side:
        return image_rgb
    scale = max_side / longer
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------- pixel operations for training's augmentation


def shrink_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to ``width`` x ``height`` with area interpolation (for shrinking)."""
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, the border filled by reflection."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)


def gaussian_blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """Focus blur: a Gaussian of odd ``kernel`` pixels (sigma from the kernel size)."""
    return cv2.GaussianBlur(image, (kernel, kernel), 0)


def motion_blur(image: np.ndarray, kernel: int, degrees: float) -> np.ndarray:
    """Motion blur: the average along a ``kernel``-pixel line at ``degrees``."""
    line = np.zeros((kernel, kernel), np.float32)
    line[kernel // 2, :] = 1.0 / kernel
    centre = (kernel / 2 - 0.5, kernel / 2 - 0.5)
    line = cv2.warpAffine(line, cv2.getRotationMatrix2D(centre, degrees, 1.0), (kernel, kernel))
    return cv2.filter2D(image, -1, line / max(line.sum(), 1e-6))


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after JPEG compression at ``quality`` (its channels coded as they are)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else image


def gaussian_blur_sigma(image: np.ndarray, sigma: float) -> np.ndarray:
    """Defocus: a Gaussian of standard deviation ``sigma`` pixels (kernel size from sigma)."""
    return cv2.GaussianBlur(image, (0, 0), sigma)


def open_mask(mask: np.ndarray, diameter: int) -> np.ndarray:
    """Morphological opening with an elliptic ``diameter``-pixel element: specks smaller than
    it are removed from a (float or uint8) mask."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
