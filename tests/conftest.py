"""Shared fixtures. No test sleeps for real: time comes from FakeClock."""

from __future__ import annotations

from pathlib import Path

import pytest

from bin_daemon.hardware.fakes import FakeClock
from bin_daemon.paths import shipped_models_dir

TESTS_DIR = Path(__file__).resolve().parent
SAMPLES_DIR = TESTS_DIR / "data" / "samples"
FIXTURE_MODELS_DIR = TESTS_DIR / "data" / "models"


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path_factory, monkeypatch):
    """The user's state folder (site store, event log) of every test, and of the daemons
    tests start, is a temporary one: no test writes to ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg_state")))


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


@pytest.fixture
def broker_factory(tmp_path: Path):
    """Start real Mosquitto brokers (conftest_mqtt.Broker); all stopped after the test."""
    import os

    from conftest_mqtt import MOSQUITTO, Broker

    if MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail(
                "mosquitto is not installed; .ci/run installs it (apt-get install mosquitto)"
            )
        pytest.skip("mosquitto not installed (apt-get install mosquitto); CI runs these tests")
    brokers: list[Broker] = []

    def make(port: int | None = None, start: bool = True) -> Broker:
        broker = Broker(tmp_path / f"broker{len(brokers)}", port)
        brokers.append(broker)
        return broker.start() if start else broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory):
    """One real Mosquitto broker on 127.0.0.1 and a free port."""
    return broker_factory()
