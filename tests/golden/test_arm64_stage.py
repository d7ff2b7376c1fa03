"""The arm64 stage's pure parts (ci/arm64/): pip failure diagnosis and the golden comparison.

The stage itself (debootstrap, qemu, chroot) runs as `make test-arm64`; see docs/ARM64.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "ci" / "arm64" / "stage.sh"

# What pip 23 (bookworm's) prints for a pinned package with no aarch64 wheel and no sdist.
NO_WHEEL = """\
Processing /tmp/tmp.x/wheels/bin_daemon-0.1.0-py3-none-any.whl
Collecting numpy<2,>=1.26
  Using cached numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
ERROR: Could not find a version that satisfies the requirement tensorflow-cpu==2.21.0 (from bin-daemon) (from versions: none)
ERROR: No matching distribution found for tensorflow-cpu==2.21.0
"""
FAILED_BUILD = """\
  Building wheel for frobnicate (pyproject.toml) ... error
  ERROR: Failed building wheel for frobnicate
Failed to build frobnicate
ERROR: Could not build wheels for frobnicate, which is required to install pyproject.toml-based projects
"""


def diagnose(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    log = tmp_path / "pip.log"
    log.write_text(text)
    return subprocess.run(
        ["bash", str(STAGE), "--diagnose", str(log)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_package_without_an_aarch64_wheel_is_named(tmp_path: Path) -> None:
    done = diagnose(tmp_path, NO_WHEEL)
    assert done.returncode == 0
    assert done.stdout.startswith("arm64 stage: no aarch64 build of tensorflow-cpu ")


def test_a_package_that_fails_to_compile_is_named(tmp_path: Path) -> None:
    done = diagnose(tmp_path, FAILED_BUILD)
    assert done.stdout.startswith("arm64 stage: no aarch64 build of frobnicate ")


def test_other_failures_are_not_blamed_on_a_package(tmp_path: Path) -> None:
    assert diagnose(tmp_path, "error: run as root\n").returncode == 1


def _golden():
    spec = importlib.util.spec_from_file_location("golden", REPO / "ci" / "arm64" / "golden.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(image: str, label: str, score: float, other: float) -> dict:
    return {
        "image": image,
        "label": label,
        "confidence": score,
        "top": [{"label": label, "score": score}, {"label": "trash", "score": other}],
    }


STEP = 1 / 256


@pytest.mark.parametrize(
    ("arm", "ok"),
    [
        (_result("/root/src/tests/data/samples/glass/g1.jpg", "glass", 0.8008, 0.1), True),
        (_result("/root/src/tests/data/samples/glass/g1.jpg", "glass", 0.8047, 0.1016), True),
        (_result("/root/src/tests/data/samples/glass/g1.jpg", "glass", 0.8125, 0.1), False),
        (_result("/root/src/tests/data/samples/glass/g1.jpg", "paper", 0.8008, 0.1), False),
    ],
)
def test_golden_labels_equal_and_scores_within_one_step(arm: dict, ok: bool) -> None:
    x86 = [_result("tests/data/samples/glass/g1.jpg", "glass", 0.8008, 0.1)]
    problems, _worst, count, _over = _golden().compare(x86, [arm], STEP)
    assert count == 1
    assert (not problems) == ok, problems


def test_golden_zero_steps_allows_only_the_json_rounding() -> None:
    """The reference kernels' gate: the same scores, up to classify --json's 4 decimals."""
    x86 = [
        _result("/tmp/run/merged/root/src/build/model-inputs/glass/g1.png", "glass", 0.8008, 0.1)
    ]
    same = [_result("build/model-inputs/glass/g1.png", "glass", 0.8008, 0.1)]
    one_step = [_result("build/model-inputs/glass/g1.png", "glass", 0.8047, 0.1)]
    assert _golden().compare(x86, same, STEP, max_steps=0)[0] == []
    assert _golden().compare(x86, one_step, STEP, max_steps=0)[0] != []


def test_model_inputs_match_their_images_read_back(tmp_path: Path) -> None:
    """ci/arm64/model_inputs.py: a PNG of the model's input passes to_model_input unchanged."""
    spec = importlib.util.spec_from_file_location("model_inputs", STAGE.parent / "model_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples = sorted((REPO / "tests" / "data" / "samples" / "glass").glob("*.jpg"))[:2]
    assert module.main(["--model", str(REPO / "models"), str(tmp_path), *map(str, samples)]) == 0
    from bin_daemon.model.classifier import CARD_FILE, read_card
    from bin_daemon.model.preprocess import load_image, to_model_input

    size = read_card(REPO / "models" / CARD_FILE)["input"]["size"]
    for sample in samples:
        written = load_image(tmp_path / "glass" / f"{sample.stem}.png")
        assert written.shape == (size, size, 3)
        assert (written == to_model_input(load_image(sample), size)).all()
