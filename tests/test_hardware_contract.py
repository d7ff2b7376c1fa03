"""Lids and sensors: the gpiozero adapters on mock pins and the fakes pass the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.fakes import (
    DrivenRanger,
    FakeFillSensor,
    FakeLid,
    FakeProximitySensor,
    ItemFeed,
    ScriptedFillSensor,
)
from bin_daemon.hardware.fill import FillSettings
from bin_daemon.hardware.gpio import (
    FillRanger,
    IrSensor,
    ServoLid,
    UltrasonicSensor,
    echo_time_s,
    mock_hcsr04_pins,
    mock_ultrasonic_pins,
    pi_pin_factory,
    plain_mock_pins,
)
from bin_daemon.hardware.ports import FillSensor, Lid, ProximitySensor

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


@pytest.fixture(params=["ir-on-mock-pin", "fake", "item-feed", "hcsr04-on-mock-pins"])
def drivable_sensor(request, pin_factory) -> ProximitySensor:
    if request.param == "fake":
        yield FakeProximitySensor()
        return
    if request.param == "hcsr04-on-mock-pins":  # what run --hardware fake builds for hcsr04
        pin = mock_hcsr04_pins(pin_factory, trigger_gpio=23, echo_gpio=24, distance_m=0.6)
        with plain_mock_pins(pin_factory):
            ultrasonic = UltrasonicSensor(trigger_gpio=23, echo_gpio=24, trigger_distance_m=0.15,
                                          max_distance_m=1.0, pin_factory=pin_factory)  # fmt: skip
        sensor = DrivenRanger(ultrasonic, lambda d: setattr(pin, "echo_time", echo_time_s(d)),
                              item_m=0.075, empty_m=0.575)  # fmt: skip
        yield sensor
        sensor.close()
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
    assert drivable_sensor.describe().endswith("inactive")  # an HC-SR04 says its distance first
    drivable_sensor.drive(True)
    assert drivable_sensor.is_active is True
    assert drivable_sensor.describe().endswith("active (item present)")
    drivable_sensor.drive(False)
    assert drivable_sensor.is_active is False
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


# --- fill-level sensors (issue 16) --------------------------------------------------------

FILL = FillSettings(empty_distance_m=0.8, full_distance_m=0.1)
MOCK_M = 0.005
"""gpio.SteadyTriggerPin stamps the echo exactly: readings are the set distance."""


class _Placed:
    """Puts the object in front of a fill sensor at a distance, however that sensor does it."""

    def __init__(self, sensor, place):
        self.sensor, self.place = sensor, place


@pytest.fixture(params=["ranger-on-mock-pins", "fake-fill-sensor", "scripted"])
def fill_sensor(request, pin_factory):
    if request.param == "scripted":
        sensor = ScriptedFillSensor("fill sensor 'glass'", distance_m=0.8)
        yield _Placed(sensor, lambda d: setattr(sensor, "distance_m", d))
        return
    pin = mock_hcsr04_pins(pin_factory, trigger_gpio=5, echo_gpio=6, distance_m=0.8)
    with plain_mock_pins(pin_factory):
        ranger = FillRanger(trigger_gpio=5, echo_gpio=6, name="fill sensor 'glass'",
                            pin_factory=pin_factory)  # fmt: skip
    move = lambda d: setattr(pin, "echo_time", echo_time_s(d))  # noqa: E731
    if request.param == "ranger-on-mock-pins":
        placed = _Placed(ranger, move)
    else:
        fake = FakeFillSensor(ranger, move, FILL.distance_m, bin_name="glass")
        placed = _Placed(fake, lambda d: fake.set_percent(FILL.percent(d)))
    yield placed
    placed.sensor.close()


def _fresh(sensor, count=2):
    """Readings after a move: the first may have been pinged before it."""
    for _ in range(count - 1):
        sensor.wait_sample()
    return sensor.wait_sample()


def test_fill_sensor_contract(fill_sensor):
    sensor = fill_sensor.sensor
    assert isinstance(sensor, FillSensor) and sensor.name == "fill sensor 'glass'"
    first = sensor.wait_sample()
    assert first.distance_m == pytest.approx(0.8, abs=MOCK_M)
    fill_sensor.place(0.3)
    moved = _fresh(sensor)
    assert moved.seq > first.seq and moved.distance_m == pytest.approx(0.3, abs=MOCK_M)
    later = sensor.sample()  # never waits; each reading is handed out once
    assert later is None or later.seq > moved.seq
    again = sensor.sample()
    assert again is None or again.seq > (later or moved).seq
    sensor.rest()  # no readings wanted for a while; the next read starts again
    sensor.rest()  # twice is harmless
    woke = sensor.wait_sample()
    assert woke.seq > (again or later or moved).seq
    assert woke.distance_m == pytest.approx(0.3, abs=MOCK_M)


def test_the_fake_fill_level_is_set_by_percent_or_by_a_file(pin_factory, tmp_path):
    pin = mock_hcsr04_pins(pin_factory, trigger_gpio=5, echo_gpio=6, distance_m=0.8)
    with plain_mock_pins(pin_factory):
        ranger = FillRanger(trigger_gpio=5, echo_gpio=6, pin_factory=pin_factory)
    levels = tmp_path / "levels.json"
    fake = FakeFillSensor(ranger, lambda d: setattr(pin, "echo_time", echo_time_s(d)),
                          FILL.distance_m, bin_name="glass", levels_file=levels)  # fmt: skip
    assert FILL.percent(fake.wait_sample().distance_m) == pytest.approx(0, abs=0.5)  # empty
    fake.set_percent(60)
    assert FILL.percent(fake.wait_sample().distance_m) == pytest.approx(60, abs=0.5)
    levels.write_text('{"glass": 95, "landfill": 10}')
    assert FILL.percent(fake.wait_sample().distance_m) == pytest.approx(95, abs=0.5)
    assert fake.percent == 95
    levels.write_text('{"glass": "lots"}')  # a bad file: one warning, the level stays
    assert FILL.percent(fake.wait_sample().distance_m) == pytest.approx(95, abs=0.5)
    fake.close()


def test_a_resting_ranger_does_not_ping_and_hands_out_no_reading_from_before(pin_factory):
    mock_hcsr04_pins(pin_factory, trigger_gpio=5, echo_gpio=6, distance_m=0.5)
    with plain_mock_pins(pin_factory):
        ranger = FillRanger(trigger_gpio=5, echo_gpio=6, pin_factory=pin_factory)
    assert ranger.awake  # open after construction: the pins are checked at start
    first = ranger.wait_sample()
    ranger.rest()
    assert not ranger.awake
    seq = ranger.seq
    assert ranger.sample() is None  # woken by the read: nothing new yet, nothing old
    assert ranger.awake and ranger.wait_sample().seq > seq >= first.seq
    ranger.close()
    assert not ranger.awake


def test_a_fill_sensor_without_echo_is_a_hardware_error_not_a_hang(pin_factory):
    with plain_mock_pins(pin_factory):  # plain mock pins: no echo ever comes
        ranger = FillRanger(trigger_gpio=5, echo_gpio=6, echo_timeout_s=0.2,
                            name="fill sensor 'glass'", pin_factory=pin_factory)  # fmt: skip
    try:
        with pytest.raises(HardwareError, match=r"fill sensor 'glass': HC-SR04 no echo within"):
            ranger.wait_sample(0.3)
        with pytest.raises(HardwareError, match=r"no echo for 0\.\d s \(check the echo wire"):
            ranger.sample()  # past echo_timeout_s since it was opened
    finally:
        ranger.close()
