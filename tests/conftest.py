"""Shared fixtures. No test sleeps for real: time comes from FakeClock."""

from __future__ import annotations

from pathlib import Path

import pytest

from bin_daemon.hardware.fakes import FakeClock
from bin_daemon.paths import shipped_models_dir

TESTS_DIR = Path(__file__).resolve().parent
SAMPLES_DIR = TESTS_DIR / "data" / "samples"
FIXTURE_MODELS_DIR = TESTS_DIR / "data" / "models"


@pytest.fixture
def pin_factory():
    """gpiozero mock pins with PWM, closed and reset after the test (no GPIOPinInUse)."""
    from bin_daemon.hardware.gpio import mock_pin_factory

    factory = mock_pin_factory()
    try:
        yield factory
    finally:
        factory.close()
        factory.reset()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES_DIR


@pytest.fixture
def model_dir() -> Path:
    """The real model shipped in models/ (tests using it fail until it is there)."""
    return shipped_models_dir()
