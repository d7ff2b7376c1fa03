"""Where the shipped model and the bundled default config live."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_models_dir() -> Path:
    """The model folder shipped with the package.

    A wheel carries it inside the package (``bin_daemon/models``); an editable install or a
    source checkout uses the repository's top-level ``models/``.
    """
    inside = PACKAGE_DIR / "models"
    if inside.is_dir():
        return inside
    return PACKAGE_DIR.parent / "models"
