"""The README's promise about third-party libraries: each library that reaches outside the
program (hardware, images, the interpreter, network, journal, files, crypto) is imported by
one module only, its adapter. numpy (the common array type) and Keras (training's
framework) are used throughout and are not in the list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "bin_daemon"
ADAPTERS: dict[str, str | set[str]] = {
    "cv2": "model/preprocess.py",
    "gpiozero": "hardware/gpio.py",
    "picamera2": "hardware/picamera.py",
    "ai_edge_litert": "model/classifier.py",
    "tflite_runtime": "model/classifier.py",
    "paho": "telemetry/mqtt.py",
    "systemd": "records/journal.py",
    "ruamel": "config.py",
    "pydantic": {"config.py", "console/state.py", "console/taught.py"},  # config; console JSON
    "fastapi": "console/app.py",
    "starlette": "console/app.py",
    "uvicorn": "console/app.py",
    "cryptography": "model/signing.py",
    "prometheus_client": "telemetry/prometheus.py",
    # qat.py: only for its fake-quant op, which the converter reads the int8 ranges from
    "tensorflow": {"training/export.py", "training/embedding_output.py", "training/qat.py"},
    "matplotlib": {"training/card.py", "training/site_experiments.py"},  # report plots
}


def importers() -> dict[str, set[str]]:
    """Top-level module name -> the package's modules that import it (anywhere in them)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(module)
    return found


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_each_adapter_library_is_imported_by_its_adapter_only(library: str) -> None:
    expected = ADAPTERS[library]
    assert importers().get(library, set()) == (
        {expected} if isinstance(expected, str) else expected
    )


def test_the_check_sees_imports_inside_functions() -> None:
    # picamera2 and the interpreters are imported lazily, inside functions: still found.
    found = importers()
    assert found["picamera2"] == {"hardware/picamera.py"}
    assert found["tflite_runtime"] == {"model/classifier.py"}
