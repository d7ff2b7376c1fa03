"""The preprocessing contract shared by the daemon and training."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bin_daemon.errors import ImageError
from bin_daemon.model.preprocess import center_square, decode_image, load_image, to_model_input

SAMPLE = Path(__file__).parent / "data" / "samples" / "glass" / "glass1.jpg"


def _encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def test_jpeg_decodes_to_rgb_uint8():
    rgb = load_image(SAMPLE)
    assert rgb.dtype == np.uint8 and rgb.shape == (384, 512, 3)


def test_channel_order_is_rgb():
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    rgb = decode_image(_encode(bgr))
    assert rgb[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    "image",
    [
        np.full((5, 7), 200, np.uint8),  # greyscale
        np.full((5, 7, 4), 200, np.uint8),  # with alpha
        np.full((5, 7, 3), 200 * 257, np.uint16),  # 16-bit
    ],
    ids=["grey", "rgba", "16bit"],
)
def test_other_pixel_formats_become_rgb8(image):
    rgb = decode_image(_encode(image))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == 200)


def test_empty_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_image(empty)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(SAMPLE.read_bytes()[:300])
    with pytest.raises(ImageError, match=r"cut\.jpg: not a decodable image"):
        load_image(truncated)


def test_text_file_is_not_an_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(text)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match=r"nothere\.jpg: cannot read"):
        load_image(tmp_path / "nothere.jpg")


def test_model_input_is_the_centred_square_resized():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # exactly the centred 100x100 square is white
    model_input = to_model_input(image, 32)
    assert model_input.shape == (32, 32, 3) and model_input.dtype == np.uint8
    assert np.all(model_input == 255)
    assert center_square(image).shape == (100, 100, 3)


def test_model_input_rejects_non_rgb():
    with pytest.raises(ImageError, match="expected an RGB uint8 image"):
        to_model_input(np.zeros((10, 10), np.uint8), 8)
