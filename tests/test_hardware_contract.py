"""Lids and sensors: the gpiozero adapters on mock pins and the fakes pass the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.fakes import FakeLid, FakeProximitySensor, ItemFeed
from bin_daemon.hardware.gpio import (
    IrSensor,
    ServoLid,
    UltrasonicSensor,
    mock_ultrasonic_pins,
    pi_pin_factory,
)
from bin_daemon.hardware.ports import Lid, ProximitySensor

SERVO = dict(min_angle_deg=0, max_angle_deg=180, min_pulse_width_s=0.0005, max_pulse_width_s=0.0025)


# --- lids --------------------------------------------------------------------------------


@pytest.fixture(params=["servo-on-mock-pins", "fake"])
def lid(request, pin_factory) -> Lid:
    if request.param == "fake":
        yield FakeLid("recycling")
        return
    servo = ServoLid(
        "recycling",
        gpio=12,
        open_angle_deg=90,
        closed_angle_deg=0,
        pin_factory=pin_factory,
        **SERVO,
    )
    yield servo
    servo.shutdown()


def test_lid_contract_open_close_detach(lid):
    assert isinstance(lid, Lid)
    assert lid.name == "recycling"
    assert not lid.is_open
    lid.open()
    assert lid.is_open
    lid.close()
    assert not lid.is_open
    lid.detach()
    assert not lid.is_open  # detaching does not move the lid
    lid.detach()  # twice is harmless
    lid.open()  # a detached lid can be driven again
    assert lid.is_open


def test_servo_pulse_widths_at_50_hz(pin_factory):
    lid = ServoLid(
        "glass", gpio=13, open_angle_deg=180, closed_angle_deg=0, pin_factory=pin_factory, **SERVO
    )
    assert lid.pin.state == 0  # built detached: no pulse until the sorter closes it
    assert lid.pin.frequency in (None, 50)
    lid.close()
    assert lid.pin.frequency == 50
    assert lid.pin.state == pytest.approx(0.025)  # 0.5 ms of 20 ms at 0 deg
    lid.move_to(90)
    assert lid.pin.state == pytest.approx(0.075)  # 1.5 ms at 90 deg
    lid.open()
    assert lid.pin.state == pytest.approx(0.125)  # 2.5 ms at 180 deg
    lid.detach()
    assert lid.pin.state == 0  # no PWM: no jitter, no hum
    lid.shutdown()


def test_servo_calibration_is_used(pin_factory):
    lid = ServoLid(
        "landfill",
        gpio=18,
        open_angle_deg=-45,
        closed_angle_deg=45,
        min_angle_deg=-90,
        max_angle_deg=90,
        min_pulse_width_s=0.001,
        max_pulse_width_s=0.002,
        pin_factory=pin_factory,
    )
    lid.open()
    assert lid.pin.state == pytest.approx(0.0625)  # 1.25 ms
    lid.close()
    assert lid.pin.state == pytest.approx(0.0875)  # 1.75 ms
    lid.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(open_angle_deg=200), "open_angle_deg must be within 0..180 degrees, got 200"),
        (dict(min_pulse_width_s=0.003), "pulse widths must satisfy"),
        (dict(min_pulse_width_s=0), "min_pulse_width_s must be positive"),
    ],
)
def test_servo_arguments_are_checked(pin_factory, kwargs, message):
    args = dict(gpio=12, open_angle_deg=90, closed_angle_deg=0, pin_factory=pin_factory, **SERVO)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ServoLid("x", **args)


def test_servo_pin_in_use_is_a_hardware_error(pin_factory):
    first = ServoLid("a", gpio=12, open_angle_deg=90, closed_angle_deg=0, pin_factory=pin_factory)
    with pytest.raises(HardwareError, match=r"lid 'b': cannot set up the servo on GPIO12"):
        ServoLid("b", gpio=12, open_angle_deg=90, closed_angle_deg=0, pin_factory=pin_factory)
    first.shutdown()


# --- proximity sensors -------------------------------------------------------------------


@pytest.fixture(params=["ir-on-mock-pin", "fake", "item-feed"])
def drivable_sensor(request, pin_factory) -> ProximitySensor:
    if request.param == "fake":
        yield FakeProximitySensor()
        return
    sensor = IrSensor(gpio=17, active_low=True, pin_factory=pin_factory)
    if request.param == "item-feed":
        yield _FeedDriver(sensor)
    else:
        yield sensor
    sensor.close()


class _FeedDriver:
    """An ItemFeed with max_items=0 places nothing, so it reads like the sensor it wraps."""

    def __init__(self, sensor):
        self.inner = sensor
        self.feed = ItemFeed(sensor, max_items=0)

    @property
    def is_active(self):
        return self.feed.is_active

    def drive(self, active):
        self.inner.drive(active)

    def describe(self):
        return self.feed.describe()

    def close(self):
        self.feed.close()


def test_sensor_contract(drivable_sensor):
    assert isinstance(drivable_sensor, ProximitySensor)
    drivable_sensor.drive(False)
    assert drivable_sensor.is_active is False
    assert drivable_sensor.describe() == "inactive"
    drivable_sensor.drive(True)
    assert drivable_sensor.is_active is True
    assert drivable_sensor.describe() == "active (item present)"
    drivable_sensor.close()


@pytest.mark.parametrize("active_low", [True, False])
def test_ir_sensor_polarity(pin_factory, active_low):
    sensor = IrSensor(gpio=27, active_low=active_low, pin_factory=pin_factory)
    sensor.pin.drive_low()
    assert sensor.is_active is active_low
    sensor.pin.drive_high()
    assert sensor.is_active is not active_low
    sensor.close()


def test_ir_sensor_pull_must_agree_with_polarity(pin_factory):
    with pytest.raises(ValueError, match="pull_up=True needs active_low=True"):
        IrSensor(gpio=27, active_low=False, pull_up=True, pin_factory=pin_factory)


def test_item_feed_places_one_item_and_drops_it_when_a_lid_opens(pin_factory):
    sensor = IrSensor(gpio=17, pin_factory=pin_factory)
    feed = ItemFeed(sensor, max_items=2)
    lid = feed.watch(FakeLid("glass"))
    assert feed.is_active is False  # the flap is seen empty first
    assert [feed.is_active for _ in range(3)] == [True, True, True]  # an item waits
    lid.open()
    assert feed.is_active is False  # it fell
    assert feed.is_active is True  # the second item
    lid.open()
    assert [feed.is_active for _ in range(3)] == [False, False, False]  # no more
    assert feed.placed == 2
    sensor.close()


@pytest.mark.parametrize(("echo_time_s", "active"), [(0.004, False), (0.0006, True)])
def test_ultrasonic_threshold_on_mock_trigger_pin(echo_time_s, active):
    # A MockTriggerPin answers each trigger with an echo of echo_time_s (gpiozero's own
    # thread; the first reading takes about 0.6 s). 0.004 s ~ 0.69 m, 0.0006 s ~ 0.10 m.
    # Plain (non-PWM) mock pins: a factory cannot mix them with MockPWMPin.
    pin_factory = MockFactory()
    mock_ultrasonic_pins(pin_factory, trigger_gpio=23, echo_gpio=24, echo_time_s=echo_time_s)
    sensor = UltrasonicSensor(
        trigger_gpio=23,
        echo_gpio=24,
        trigger_distance_m=0.3,
        max_distance_m=1.0,
        pin_factory=pin_factory,
    )
    expected_m = echo_time_s * 343 / 2
    assert sensor.distance_m == pytest.approx(expected_m, abs=0.06)
    assert sensor.is_active is active
    assert sensor.describe().startswith("distance 0.")
    sensor.close()
    pin_factory.close()
    pin_factory.reset()


def test_ultrasonic_arguments_are_checked(pin_factory):
    with pytest.raises(ValueError, match=r"trigger_distance_m \(2\) must be less than max"):
        UltrasonicSensor(
            trigger_gpio=23, echo_gpio=24, trigger_distance_m=2, pin_factory=pin_factory
        )


@pytest.mark.skipif(Path("/proc/device-tree/model").exists(), reason="this machine has GPIO")
def test_no_gpio_off_a_pi_is_one_clear_line():
    with pytest.raises(HardwareError) as caught:
        pi_pin_factory()
    message = str(caught.value)
    assert message.startswith("no GPIO here (not a Raspberry Pi, or python3-lgpio missing; try")
    assert "\n" not in message
