"""The small interfaces the sorter talks to. Real adapters and fakes both satisfy them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    ``rgb``: (H, W, 3) uint8 in RGB order. ``timestamp``: when it was exposed, in seconds on
    the clock's monotonic time base. ``source``: the image path (fake camera) or the sensor
    timestamp in nanoseconds (Pi camera): what the event record calls ``frame_source``.
    """

    rgb: np.ndarray
    timestamp: float
    source: str | int


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for the events' ``ts``)."""
        ...

    def sleep(self, seconds: float, *, interrupt: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return True at once if ``interrupt`` is (or becomes) set."""
        ...


@runtime_checkable
class ProximitySensor(Protocol):
    @property
    def is_active(self) -> bool:
        """True while something is on the flap (raw, not debounced)."""
        ...

    def describe(self) -> str:
        """A reading for humans, e.g. 'distance 0.42 m (inactive)'."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Camera(Protocol):
    def capture(self, *, not_before: float) -> Frame:
        """A frame exposed no earlier than ``not_before`` (monotonic seconds).

        Raises HardwareError if no fresh frame comes in time.
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class Lid(Protocol):
    name: str

    @property
    def is_open(self) -> bool:
        """True once the lid was commanded open, until it is commanded closed."""
        ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def detach(self) -> None:
        """Stop driving the servo (no PWM: no jitter, no hum). The lid stays where it is."""
        ...

    def shutdown(self) -> None:
        """Release the device (after it has been closed and detached)."""
        ...


@dataclass(frozen=True)
class RangeSample:
    """One distance reading: ``seq`` counts the sensor's readings since it was opened."""

    seq: int
    distance_m: float


@runtime_checkable
class FillSensor(Protocol):
    """A distance sensor looking down into a bin (issue 16)."""

    name: str

    def sample(self) -> RangeSample | None:
        """The newest reading not taken yet, or None; never waits. HardwareError: no echo."""
        ...

    def wait_sample(self, timeout_s: float | None = None) -> RangeSample:
        """Wait for a new reading (HardwareError if none comes in time)."""
        ...

    def rest(self) -> None:
        """No readings are wanted for a while: stop pinging (the next read starts again)."""
        ...

    def close(self) -> None: ...
