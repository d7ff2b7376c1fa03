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
