"""Model folders for tests: the tiny fixture models with a matching card and labels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FIXTURE_MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"
TINY = FIXTURE_MODELS_DIR / "tiny_uint8_32px.tflite"
TINY_FLOAT = FIXTURE_MODELS_DIR / "tiny_float_32px.tflite"
LABELS = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def make_model_dir(tmp_path: Path, model: bytes | Path, *, size=32, labels=LABELS, **card) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    data = model.read_bytes() if isinstance(model, Path) else model
    (folder / "waste_classifier.tflite").write_bytes(data)
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    base = {
        "model_file": "waste_classifier.tflite",
        "version": "test",
        "sha256": hashlib.sha256(data).hexdigest(),
        "labels": labels,
        "input": {"size": size, "dtype": "uint8", "color": "RGB"},
        "unsure_threshold": 0.5,
    }
    base.update(card)
    (folder / "model_card.json").write_text(json.dumps(base))
    return folder


def assert_card_has_its_site_reference(folder: Path) -> None:
    """The card's ``embedding_reference`` is the class-balanced mean of the calibrated logits
    and the plain mean embedding of the clean training images in ``split.csv``, as the daemon's
    classifier reads them, and the site head finds both beside the model."""
    import csv

    import numpy as np

    from bin_daemon.model.classifier import Classifier
    from bin_daemon.model.preprocess import load_image
    from bin_daemon.site.head import read_last_layer, read_mean_embedding, read_reference

    card = json.loads((folder / "model_card.json").read_text())
    labels, data = card["labels"], Path(card["dataset"]["root"])
    with (folder / "split.csv").open(newline="") as handle:
        train = [row for row in csv.DictReader(handle) if row["subset"] == "train"]
    classifier = Classifier.load(folder)
    embeddings = np.stack(
        [classifier.classify(load_image(data / r["path"])).embedding for r in train]
    )
    model = folder / "waste_classifier.tflite"
    W, b = read_last_layer(model, len(labels), embeddings.shape[1])
    logits = embeddings @ W.T + b
    y = np.array([r["label"] for r in train])
    expected = np.mean([logits[y == label].mean(axis=0) for label in labels], axis=0)
    entry = card["embedding_reference"]
    assert entry["n"] == len(train) and entry["split"] == "train"
    np.testing.assert_allclose(entry["mean_logits"], expected, atol=2e-4)
    np.testing.assert_allclose(read_reference(model, len(labels)), entry["mean_logits"])
    np.testing.assert_allclose(entry["mean_embedding"], embeddings.mean(axis=0), atol=2e-5)
    np.testing.assert_allclose(
        read_mean_embedding(model, embeddings.shape[1]), entry["mean_embedding"]
    )
