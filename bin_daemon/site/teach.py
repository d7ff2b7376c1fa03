"""Teaching the bin one example: the one function the CLI and the console both call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bin_daemon.errors import BinDaemonError, ImageError, ModelError
from bin_daemon.model import preprocess
from bin_daemon.site.store import SiteStore, check_label

MAX_SIDE_PX = 1024
"""Larger images are scaled down before they are stored (the model sees 352 px; a retrain
on a laptop a little more): a phone photo stays about 200 KB instead of several MB."""
JPEG_QUALITY = 90
JPEG_MAGIC = b"\xff\xd8\xff"


def stored_jpeg(data: bytes, source: str) -> bytes:
    """The JPEG to keep for an image file's bytes: the file itself when it is a JPEG small
    enough, else the decoded image (scaled down if needed) encoded as JPEG.
    :class:`ImageError` naming ``source`` if it is not a decodable image."""
    rgb = preprocess.decode_image(data, source)
    if data.startswith(JPEG_MAGIC) and max(rgb.shape[:2]) <= MAX_SIDE_PX:
        return data
    return preprocess.encode_jpeg(preprocess.shrink_longer_side(rgb, MAX_SIDE_PX), JPEG_QUALITY)


def embed_jpeg(classifier: Any, jpeg: bytes, source: str) -> np.ndarray:
    """The model's embedding of a stored JPEG (what the store keeps and re-computes)."""
    prediction = classifier.classify(preprocess.decode_image(jpeg, source))
    embedding = getattr(prediction, "embedding", None)
    if embedding is None:
        raise ModelError(
            f"{getattr(classifier, 'model_path', 'the model')}: this model has no embedding "
            "output, so it cannot learn the site's examples; use a model exported with it "
            "(the shipped one has it; bin_daemon.training.embedding_output adds it)"
        )
    return np.asarray(embedding, dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """An example ready to store: nothing is written until :meth:`SiteStore.add`."""

    jpeg: bytes
    embedding: np.ndarray
    source: str
    item_id: str | None


def prepare(
    classifier: Any,
    rgb_or_path: np.ndarray | str | Path,
    *,
    source: str | None = None,
    item_id: str | None = None,
) -> Prepared:
    """The JPEG to keep and its embedding; one :class:`BinDaemonError` line if unusable.

    ``rgb_or_path``: an image file (its bytes are kept when it is a JPEG), or an RGB uint8
    frame (encoded as JPEG). ``source`` defaults to ``item:<item_id>`` or ``file:<path>``.
    """
    if isinstance(rgb_or_path, str | Path):
        path = Path(rgb_or_path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
        jpeg = stored_jpeg(data, str(path))
        where = source or (f"item:{item_id}" if item_id else f"file:{path.resolve()}")
    elif isinstance(rgb_or_path, np.ndarray):
        rgb = rgb_or_path
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
            raise ImageError(
                f"{source or 'frame'}: expected an RGB uint8 image (H, W, 3), got "
                f"{rgb.dtype} {rgb.shape}"
            )
        jpeg = preprocess.encode_jpeg(preprocess.shrink_longer_side(rgb, MAX_SIDE_PX), JPEG_QUALITY)
        where = source or (f"item:{item_id}" if item_id else "frame")
    else:
        raise BinDaemonError(f"site: expected an image path or an RGB array, got {rgb_or_path!r}")
    return Prepared(jpeg, embed_jpeg(classifier, jpeg, where), where, item_id)


def add_prepared(store: SiteStore, classifier: Any, label: str, example: Prepared) -> int:
    return store.add(
        label=label,
        jpeg=example.jpeg,
        embedding=example.embedding,
        model_sha256=classifier.sha256,
        source=example.source,
        item_id=example.item_id,
    )


def teach(
    store: SiteStore,
    classifier: Any,
    *,
    label: str,
    rgb_or_path: np.ndarray | str | Path,
    source: str | None = None,
    item_id: str | None = None,
) -> int:
    """Add one labelled example to ``store``; its id once it is durable (fsynced).

    Everything is checked before anything is written: one :class:`BinDaemonError` line
    (an empty or unusable label, an unreadable image, a model without an embedding, a full
    store) and the store is unchanged. The console's "teach" and ``site add`` both call it;
    ``classifier`` is a loaded :class:`~bin_daemon.model.classifier.Classifier` or the
    daemon's :class:`~bin_daemon.site.runtime.SiteClassifier` (the model's embedding either
    way).
    """
    check_label(label)
    example = prepare(classifier, rgb_or_path, source=source, item_id=item_id)
    return add_prepared(store, classifier, label, example)
