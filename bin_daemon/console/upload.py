"""What an uploaded file claims to be, read from its header before anything is decoded.

The classify page accepts JPEG and PNG (what phones and cameras produce). The pixel count
comes from the header, so an image that would need hundreds of megabytes once decoded is
refused while it is still a few bytes of header; decoding itself is
:func:`bin_daemon.model.preprocess.decode_image`'s job.
"""

from __future__ import annotations

import struct

from bin_daemon.errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_FRAMES = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
"""Start-of-frame markers: the ones that carry the image's height and width."""
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})
"""Markers without a length field (TEM, RSTn, SOI)."""


def image_header(data: bytes, source: str = "upload") -> tuple[str, int, int]:
    """``("jpeg" | "png", width, height)`` from the header; :class:`ImageError` otherwise."""
    if not data:
        raise ImageError(f"{source}: empty file (0 bytes), not an image")
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError(f"{source}: not a decodable image (PNG header cut short)")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(data, source))
    raise ImageError(f"{source}: not a JPEG or PNG image")


def _jpeg_size(data: bytes, source: str) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _NO_LENGTH:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_FRAMES:
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header
            break
        position += 2 + length
    raise ImageError(f"{source}: not a decodable image (no JPEG frame header)")
