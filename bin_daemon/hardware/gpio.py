"""gpiozero adapters: servo lids and proximity sensors. The only module importing gpiozero.

Every device is built with an explicit ``pin_factory`` (None = gpiozero's default on a Pi;
:func:`mock_pin_factory` for fake hardware and tests), never by changing
``Device.pin_factory`` for the whole process.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from gpiozero import AngularServo, DigitalInputDevice, DistanceSensor
from gpiozero.exc import GPIOZeroError, PWMSoftwareFallback
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, MockTriggerPin, PinState

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.ports import RangeSample

PI_PIN_FACTORIES = (
    ("gpiozero.pins.lgpio", "LGPIOFactory"),  # Raspberry Pi OS Bookworm's default (Pi 4 and 5)
    ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    ("gpiozero.pins.native", "NativeFactory"),
)


def pi_pin_factory() -> Any:
    """The Pi's GPIO, tried in gpiozero's order (pigpio left out: it needs its own daemon).

    Off a Pi this is one HardwareError line instead of gpiozero's chain of fallback warnings.
    """
    reasons = []
    for module_name, class_name in PI_PIN_FACTORIES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getattr(importlib.import_module(module_name), class_name)()
        except Exception as error:  # ImportError, or a library that finds no Pi
            reasons.append(f"{class_name}: {error}")
    raise HardwareError(
        "no GPIO here (not a Raspberry Pi, or python3-lgpio missing; try --hardware fake): "
        + "; ".join(reasons)
    )


def mock_pin_factory() -> MockFactory:
    """gpiozero's mock pins, with PWM support (needed by servos)."""
    return MockFactory(pin_class=MockPWMPin)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


class ServoLid:
    """A bin lid on a hobby servo (gpiozero ``AngularServo``)."""

    def __init__(
        self,
        name: str,
        *,
        gpio: int,
        open_angle_deg: float,
        closed_angle_deg: float,
        min_angle_deg: float = 0.0,
        max_angle_deg: float = 180.0,
        min_pulse_width_s: float = 0.0005,
        max_pulse_width_s: float = 0.0025,
        frame_width_s: float = 0.02,
        pin_factory: Any = None,
    ) -> None:
        _check_positive("min_pulse_width_s", min_pulse_width_s)
        if not min_pulse_width_s < max_pulse_width_s < frame_width_s:
            raise ValueError(
                "pulse widths must satisfy 0 < min_pulse_width_s < max_pulse_width_s < "
                f"frame_width_s, got {min_pulse_width_s}, {max_pulse_width_s}, {frame_width_s}"
            )
        low, high = sorted((min_angle_deg, max_angle_deg))
        for label, angle in (
            ("open_angle_deg", open_angle_deg),
            ("closed_angle_deg", closed_angle_deg),
        ):
            if not low <= angle <= high:
                raise ValueError(f"{label} must be within {low:g}..{high:g} degrees, got {angle!r}")
        self.name = name
        self.open_angle_deg = open_angle_deg
        self.closed_angle_deg = closed_angle_deg
        self._is_open = False
        try:
            with warnings.catch_warnings():
                # Software PWM is fine for a lid; the warning is logged once by the service.
                warnings.simplefilter("ignore", PWMSoftwareFallback)
                self._servo = AngularServo(
                    gpio,
                    initial_angle=None,  # detached until the sorter drives it closed
                    min_angle=min_angle_deg,
                    max_angle=max_angle_deg,
                    min_pulse_width=min_pulse_width_s,
                    max_pulse_width=max_pulse_width_s,
                    frame_width=frame_width_s,
                    pin_factory=pin_factory,
                )
        except (GPIOZeroError, OSError) as error:
            raise HardwareError(
                f"lid '{name}': cannot set up the servo on GPIO{gpio}: {error}"
            ) from error

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def pin(self) -> Any:
        """The gpiozero pin (its ``state`` is the PWM duty cycle; 0 when detached)."""
        return self._servo.pwm_device.pin

    def open(self) -> None:
        self._servo.angle = self.open_angle_deg
        self._is_open = True

    def close(self) -> None:
        self._servo.angle = self.closed_angle_deg
        self._is_open = False

    def move_to(self, angle_deg: float) -> None:
        """Any angle (calibration). Leaves ``is_open`` True unless it is the closed angle."""
        self._servo.angle = angle_deg
        self._is_open = angle_deg != self.closed_angle_deg

    def detach(self) -> None:
        self._servo.detach()

    def shutdown(self) -> None:
        self._servo.close()


class IrSensor:
    """An IR obstacle / break-beam module on one digital input (``DigitalInputDevice``)."""

    def __init__(
        self,
        *,
        gpio: int,
        active_low: bool = True,
        pull_up: bool | None = None,
        pin_factory: Any = None,
    ) -> None:
        if pull_up is not None and pull_up != active_low:
            # gpiozero derives the active state from the pull: pull-up means active-low.
            raise ValueError(
                f"pull_up={pull_up} needs active_low={pull_up} (a pulled-up input is active low)"
            )
        try:
            self._device = DigitalInputDevice(
                gpio,
                pull_up=pull_up,
                active_state=None if pull_up is not None else not active_low,
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, OSError) as error:
            raise HardwareError(f"IR sensor: cannot set up GPIO{gpio}: {error}") from error
        self._active_low = active_low

    @property
    def is_active(self) -> bool:
        return bool(self._device.is_active)

    @property
    def pin(self) -> Any:
        return self._device.pin

    def drive(self, active: bool) -> None:
        """Mock pins only: simulate the sensor's output (an item present or not)."""
        level_high = active != self._active_low
        if level_high:
            self._device.pin.drive_high()
        else:
            self._device.pin.drive_low()

    def describe(self) -> str:
        return "active (item present)" if self.is_active else "inactive"

    def close(self) -> None:
        self._device.close()


class UltrasonicSensor:
    """An HC-SR04 (``DistanceSensor``): active while something is nearer than the threshold.

    Echo timeouts: gpiozero drops a reading with no echo and keeps averaging the old ones,
    and its first reading blocks until its queue is full (forever with no echo). Here a
    reading waits at most ``echo_timeout_s`` for the queue, and if no echo has come for
    ``echo_timeout_s`` the read raises :class:`HardwareError` (the sorter's sensor fault)
    instead of returning a stale distance.
    """

    def __init__(
        self,
        *,
        trigger_gpio: int,
        echo_gpio: int,
        trigger_distance_m: float,
        max_distance_m: float = 1.0,
        echo_timeout_s: float = 1.0,
        pin_factory: Any = None,
    ) -> None:
        _check_positive("trigger_distance_m", trigger_distance_m)
        _check_positive("echo_timeout_s", echo_timeout_s)
        if not trigger_distance_m < max_distance_m:
            raise ValueError(
                f"trigger_distance_m ({trigger_distance_m}) must be less than max_distance_m "
                f"({max_distance_m})"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PWMSoftwareFallback)
                self._device = DistanceSensor(
                    echo=echo_gpio,
                    trigger=trigger_gpio,
                    max_distance=max_distance_m,
                    threshold_distance=trigger_distance_m,
                    pin_factory=pin_factory,
                )
        except (GPIOZeroError, OSError) as error:
            raise HardwareError(
                f"HC-SR04: cannot set up trigger GPIO{trigger_gpio} / echo GPIO{echo_gpio}: {error}"
            ) from error
        self.trigger_distance_m = trigger_distance_m
        self.echo_timeout_s = echo_timeout_s
        self.last_echo = time.monotonic()  # the start counts as an echo: a grace period
        self.readings = 0
        self._reading = threading.Condition()
        read = getattr(self._device, "_read", None)
        if callable(read):  # gpiozero's sampling thread calls _read; note each echo it gets

            def noting_read() -> Any:
                value = read()
                if value is not None:
                    self.last_echo = time.monotonic()
                    with self._reading:
                        self.readings += 1
                        self._reading.notify_all()
                return value

            self._device._read = noting_read

    @property
    def distance_m(self) -> float:
        queue = getattr(self._device, "_queue", None)
        full = getattr(queue, "full", None)
        if full is not None and not full.wait(self.echo_timeout_s):
            raise HardwareError(
                f"HC-SR04: no echo within {self.echo_timeout_s:g} s (check the echo wire, its "
                "voltage divider and the 5 V supply)"
            )
        silent_s = time.monotonic() - self.last_echo
        if silent_s > self.echo_timeout_s:
            raise HardwareError(
                f"HC-SR04: no echo for {silent_s:.1f} s (check the echo wire, its voltage "
                "divider and the 5 V supply)"
            )
        return float(self._device.distance)

    @property
    def is_active(self) -> bool:
        return self.distance_m < self.trigger_distance_m

    def wait_readings(self, count: int, timeout_s: float) -> bool:
        """Wait (real time) until ``count`` more readings have come; False on timeout."""
        with self._reading:
            target = self.readings + count
            return self._reading.wait_for(lambda: self.readings >= target, timeout_s)

    def describe(self) -> str:
        distance = self.distance_m
        state = "active (item present)" if distance < self.trigger_distance_m else "inactive"
        return f"distance {distance:.3f} m, {state}"

    def close(self) -> None:
        _close_distance_sensor(self._device)


def mock_ultrasonic_pins(
    factory: MockFactory, *, trigger_gpio: int, echo_gpio: int, echo_time_s: float
) -> None:
    """Prepare mock pins so a DistanceSensor reads as if an echo took ``echo_time_s``.

    Must run before the sensor is built, on a factory whose ``pin_class`` is the plain
    ``MockPin`` (a factory cannot mix PWM and non-PWM mock pins). The echo is stamped
    exactly (:class:`SteadyTriggerPin`), whatever the machine's load.
    """
    mock_hcsr04_pins(
        factory,
        trigger_gpio=trigger_gpio,
        echo_gpio=echo_gpio,
        distance_m=echo_time_s * SPEED_OF_SOUND_M_S / 2,
    )


# --- fill-level sensors (issue 16) ---------------------------------------------------------

SPEED_OF_SOUND_M_S = 343.26
"""What gpiozero's DistanceSensor assumes (dry air at 20 degrees C)."""


class FillRanger:
    """An HC-SR04 looking down into a bin: readings on demand, never blocking the caller.

    gpiozero's ``DistanceSensor`` pings in its own thread (about every 65 ms) from when it
    is opened until it is closed. A fill level is needed about once a minute, so this
    adapter keeps it open only while readings are wanted: a read opens it (it is open after
    construction too, which checks the pins), :meth:`rest` closes it. That matters: pings
    of all HC-SR04s of the process take turns (gpiozero's class-wide lock), and one without
    echo holds that lock 100 ms per ping: on mock pins the item sensor's readings fell
    from 15.9 to 7.0 per second while it pinged all the time, and were back at 15.7 with
    it resting (``bench/hcsr04_turns.py``).

    Readings are numbered (this adapter notes each echo gpiozero's thread gets, with
    ``queue_len=1`` so ``distance`` is the latest) so a caller takes each one once:
    :meth:`sample` is the newest reading not yet taken, or None, at once; :meth:`wait_sample`
    waits for one. No echo for ``echo_timeout_s`` is a :class:`HardwareError`.
    """

    def __init__(
        self,
        *,
        trigger_gpio: int,
        echo_gpio: int,
        max_distance_m: float = 4.0,
        echo_timeout_s: float = 1.0,
        name: str = "fill sensor",
        pin_factory: Any = None,
    ) -> None:
        _check_positive("max_distance_m", max_distance_m)
        _check_positive("echo_timeout_s", echo_timeout_s)
        self.name = name
        self.echo_timeout_s = echo_timeout_s
        self._pins = (trigger_gpio, echo_gpio)
        self._max_distance_m = max_distance_m
        self._pin_factory = pin_factory
        self._seq = 0
        self._taken = 0
        self._latest = 0.0
        self._changed = threading.Condition()
        self._woke = 0.0
        self._last_echo: float | None = None
        self._device: Any = None
        self._closing: threading.Thread | None = None
        self._wake()

    def _wake(self) -> None:
        if self._device is not None:
            return
        if self._closing is not None:  # the last rest's close (long done, in practice)
            self._closing.join()
            self._closing = None
        trigger_gpio, echo_gpio = self._pins
        try:
            with warnings.catch_warnings(), plain_mock_pins(self._pin_factory):
                warnings.simplefilter("ignore", PWMSoftwareFallback)
                device = DistanceSensor(
                    echo=echo_gpio,
                    trigger=trigger_gpio,
                    max_distance=self._max_distance_m,
                    queue_len=1,
                    pin_factory=self._pin_factory,
                )
        except (GPIOZeroError, OSError) as error:
            raise HardwareError(
                f"{self.name}: cannot set up HC-SR04 trigger GPIO{trigger_gpio} / echo "
                f"GPIO{echo_gpio}: {error}"
            ) from error
        read = device._read  # called by gpiozero's sampling thread

        def numbered_read() -> Any:
            value = read()
            if value is not None:
                with self._changed:
                    self._seq += 1
                    self._last_echo = time.monotonic()
                    self._latest = float(value) * self._max_distance_m
                    self._changed.notify_all()
            return value

        device._read = numbered_read
        with self._changed:
            self._taken = self._seq  # readings from before a rest are not handed out
            self._woke = time.monotonic()
            self._last_echo = None
        self._device = device

    @property
    def awake(self) -> bool:
        """True while gpiozero pings (after construction or a read, until :meth:`rest`)."""
        return self._device is not None

    @property
    def seq(self) -> int:
        """How many readings have come since the sensor was built."""
        with self._changed:
            return self._seq

    def sample(self) -> RangeSample | None:
        """The newest reading not taken yet, or None. Never waits (it may open the sensor)."""
        self._wake()
        with self._changed:
            if self._seq > self._taken:
                self._taken = self._seq
                return RangeSample(self._seq, self._latest)
            silent_s = time.monotonic() - (self._last_echo or self._woke)
        if silent_s > self.echo_timeout_s:
            raise HardwareError(
                f"{self.name}: HC-SR04 no echo for {silent_s:.1f} s (check the echo wire, its "
                "voltage divider and the 5 V supply)"
            )
        return None

    def wait_sample(self, timeout_s: float | None = None) -> RangeSample:
        """Wait (real time, at most ``timeout_s``, default the echo timeout) for a new reading."""
        self._wake()
        timeout_s = self.echo_timeout_s if timeout_s is None else timeout_s
        with self._changed:
            if not self._changed.wait_for(lambda: self._seq > self._taken, timeout_s):
                raise HardwareError(
                    f"{self.name}: HC-SR04 no echo within {timeout_s:g} s (check the echo "
                    "wire, its voltage divider and the 5 V supply)"
                )
            self._taken = self._seq
            return RangeSample(self._seq, self._latest)

    def rest(self) -> None:
        """Stop pinging until the next read. Never waits: closing waits for the ping in
        flight (up to 0.1 s without echo), so it runs in a thread of its own."""
        device, self._device = self._device, None
        if device is not None:
            self._closing = threading.Thread(
                target=_close_distance_sensor, args=(device,), name="fill-rest", daemon=True
            )
            self._closing.start()

    def close(self) -> None:
        self.rest()
        if self._closing is not None:
            self._closing.join()
            self._closing = None


def _close_distance_sensor(device: Any) -> None:
    """Stop gpiozero's sampling thread, then close. ``DistanceSensor.close`` drops the
    trigger pin before it stops the thread, so a ping in flight dies with AttributeError."""
    queue = getattr(device, "_queue", None)
    if queue is not None:
        queue.stop()
    device.close()


def echo_time_s(distance_m: float) -> float:
    """How long an HC-SR04's echo pulse lasts for an object ``distance_m`` away."""
    return 2 * distance_m / SPEED_OF_SOUND_M_S


@contextlib.contextmanager
def plain_mock_pins(factory: Any) -> Iterator[None]:
    """While building HC-SR04s on a mock factory whose default pins are PWM pins.

    A MockFactory refuses to hand a plain (trigger or echo) pin to a device asking for its
    default pin class when that is ``MockPWMPin``; servos need PWM, HC-SR04s plain pins.
    """
    if not isinstance(factory, MockFactory):
        yield
        return
    saved = factory.pin_class
    factory.pin_class = MockPin
    try:
        yield
    finally:
        factory.pin_class = saved


class _StampedEchoPin(MockPin):
    """A mock echo pin whose next edge can carry a given time instead of "now"."""

    stamp: float | None = None

    def _change_state(self, value: bool) -> bool:
        if self._state == value:
            return False
        t = self.stamp if self.stamp is not None else time.monotonic()
        self.stamp = None
        self._state = value
        self.states.append(PinState(t - self._last_change, value))
        self._last_change = t
        return True


class SteadyTriggerPin(MockTriggerPin):
    """gpiozero's MockTriggerPin, answering each ping with an echo exactly ``echo_time`` long.

    The stock one starts a thread per ping that sleeps ``echo_time`` and stamps the edges
    when it wakes: on a loaded machine (two cores, six test runs) that read 1.6 m for
    0.8 m, and pings went unanswered past gpiozero's 100 ms. Here, as a real HC-SR04 does
    after the trigger pulse ends, the echo pin rises and falls at once, its edges stamped
    ``echo_time`` apart, so readings do not depend on the load (gpiozero's 60 ms between
    pings still paces them).
    """

    def _set_state(self, value: bool) -> None:
        was_high = self._state
        MockPin._set_state(self, value)  # not MockTriggerPin's: no sleeping echo thread
        echo = self.echo_pin
        if was_high and not value and echo is not None:
            rise = time.monotonic()
            if isinstance(echo, _StampedEchoPin):
                echo.stamp = rise
            echo.drive_high()
            if isinstance(echo, _StampedEchoPin):
                echo.stamp = rise + self.echo_time
            echo.drive_low()


def mock_hcsr04_pins(
    factory: MockFactory, *, trigger_gpio: int, echo_gpio: int, distance_m: float
) -> MockTriggerPin:
    """Mock pins answering each ping like an HC-SR04 facing something ``distance_m`` away.

    Set the returned pin's ``echo_time`` (:func:`echo_time_s`) to move the object.
    """
    with plain_mock_pins(factory):
        return factory.pin(
            trigger_gpio,
            pin_class=SteadyTriggerPin,
            echo_pin=factory.pin(echo_gpio, pin_class=_StampedEchoPin),
            echo_time=echo_time_s(distance_m),
        )
