"""bin-daemon: the software of a self-sorting smart bin."""

import os

__version__ = "0.1.0"

MAX_IMAGE_PIXELS = 64_000_000
"""Refuse to decode larger images (a 64 MP frame is already far beyond any Pi camera)."""

# OpenCV checks this limit on an image's header, before allocating: a small file claiming to
# be huge (a decompression bomb) is refused instead of allocating gigabytes. OpenCV reads the
# variable when it is first imported, so it is set here, before any module imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
