"""The hardware behind the sorter: ``build_hardware(config, kind)`` for "pi" or "fake".

``ports.py`` the interfaces; ``gpio.py`` gpiozero (the only import of it): lids, the item
sensor, fill-level sensors; ``picamera.py`` the camera; ``fill.py`` the bins' fill levels
(readings -> percent -> ok / warn / full); ``fakes.py`` the fakes; ``clock.py`` real time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bin_daemon.config import BinConfig, Config, IrSensorConfig
from bin_daemon.hardware.ports import Camera, Clock, FillSensor, Lid, ProximitySensor

HardwareKind = Literal["pi", "fake"]


@dataclass
class Hardware:
    sensor: ProximitySensor
    camera: Camera | None
    lids: dict[str, Lid]
    pin_factory: Any = None
    fill: dict[str, FillSensor] = field(default_factory=dict)
    """Fill-level sensors by bin (only bins with a ``fill:`` section; built with fill=True)."""
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Release everything, in reverse order of creation (lids must be closed first)."""
        errors = []
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as error:  # keep releasing the rest
                errors.append(error)
        self._closers.clear()
        if self.pin_factory is not None and hasattr(self.pin_factory, "close"):
            self.pin_factory.close()
        if errors:
            raise errors[0]


def build_lid(name: str, bin_: BinConfig, pin_factory: Any) -> Lid:
    from bin_daemon.hardware.gpio import ServoLid

    return ServoLid(
        name,
        gpio=bin_.servo_gpio,
        open_angle_deg=bin_.open_angle_deg,
        closed_angle_deg=bin_.closed_angle_deg,
        min_angle_deg=bin_.min_angle_deg,
        max_angle_deg=bin_.max_angle_deg,
        min_pulse_width_s=bin_.min_pulse_width_s,
        max_pulse_width_s=bin_.max_pulse_width_s,
        pin_factory=pin_factory,
    )


def build_hardware(
    config: Config,
    kind: HardwareKind,
    *,
    clock: Clock,
    images: Path | None = None,
    max_items: int | None = None,
    camera: bool = True,
    lids: bool = True,
    fill: bool = False,
    fill_levels: Path | None = None,
) -> Hardware:
    """The sensor, camera and lids (and with ``fill``, the bins' fill sensors) for ``kind``.

    "pi": gpiozero on the Pi's GPIO and picamera2. "fake": the same gpiozero adapters on
    mock pins (the configured sensor, IR or HC-SR04, driven by an :class:`ItemFeed`: one
    item per image; fill sensors at the levels of the ``fill_levels`` file, else empty) and
    a camera serving ``images``.
    """
    from bin_daemon.hardware import gpio

    hw = Hardware(sensor=None, camera=None, lids={})  # type: ignore[arg-type]
    try:
        if kind == "pi":
            hw.pin_factory = gpio.pi_pin_factory()
            hw.sensor = _pi_sensor(config, hw.pin_factory)
        else:
            from bin_daemon.hardware.fakes import ItemFeed

            hw.pin_factory = gpio.mock_pin_factory()
            raw = _fake_sensor(config, hw.pin_factory)
            raw.drive(False)  # an empty flap
            hw.sensor = ItemFeed(raw, max_items=max_items) if camera else raw
        hw._closers.append(hw.sensor.close)
        if fill:
            for name, bin_ in config.bins.items():
                if bin_.fill is not None:
                    hw.fill[name] = _fill_sensor(name, bin_, kind, hw.pin_factory, fill_levels)
                    hw._closers.append(hw.fill[name].close)
        if camera:
            hw.camera = _camera(config, kind, clock, images)
            hw._closers.append(hw.camera.close)
        if lids:
            for name, bin_ in config.bins.items():
                lid = build_lid(name, bin_, hw.pin_factory)
                hw._closers.append(lid.shutdown)
                if kind == "fake" and hasattr(hw.sensor, "watch"):
                    lid = hw.sensor.watch(lid)  # the item falls when a lid opens
                hw.lids[name] = lid
    except BaseException:
        hw.close()
        raise
    return hw


def _pi_sensor(config: Config, pin_factory: Any) -> ProximitySensor:
    from bin_daemon.hardware import gpio

    s = config.sensor
    if isinstance(s, IrSensorConfig):
        return gpio.IrSensor(
            gpio=s.gpio, active_low=s.active_low, pull_up=s.pull_up, pin_factory=pin_factory
        )
    return gpio.UltrasonicSensor(
        trigger_gpio=s.trigger_gpio,
        echo_gpio=s.echo_gpio,
        trigger_distance_m=s.trigger_distance_m,
        max_distance_m=s.max_distance_m,
        echo_timeout_s=s.echo_timeout_s,
        pin_factory=pin_factory,
    )


def _fake_sensor(config: Config, pin_factory: Any) -> Any:
    """The configured sensor type on mock pins, drivable (an item on the flap or not)."""
    from bin_daemon.hardware import gpio
    from bin_daemon.hardware.fakes import DrivenRanger

    s = config.sensor
    if isinstance(s, IrSensorConfig):
        return gpio.IrSensor(gpio=s.gpio, active_low=True, pin_factory=pin_factory)
    empty_m = (s.trigger_distance_m + s.max_distance_m) / 2
    pin = gpio.mock_hcsr04_pins(
        pin_factory, trigger_gpio=s.trigger_gpio, echo_gpio=s.echo_gpio, distance_m=empty_m
    )
    with gpio.plain_mock_pins(pin_factory):
        sensor = _pi_sensor(config, pin_factory)  # the very adapter a Pi uses
    return DrivenRanger(
        sensor,
        lambda distance_m: setattr(pin, "echo_time", gpio.echo_time_s(distance_m)),
        item_m=s.trigger_distance_m / 2,
        empty_m=empty_m,
    )


def _fill_sensor(
    name: str, bin_: BinConfig, kind: HardwareKind, pin_factory: Any, levels: Path | None
) -> FillSensor:
    from bin_daemon.hardware import gpio

    f = bin_.fill
    assert f is not None
    pin = None
    if kind == "fake":
        pin = gpio.mock_hcsr04_pins(
            pin_factory,
            trigger_gpio=f.trigger_gpio,
            echo_gpio=f.echo_gpio,
            distance_m=f.empty_distance_m,
        )
    with gpio.plain_mock_pins(pin_factory):
        ranger = gpio.FillRanger(
            trigger_gpio=f.trigger_gpio,
            echo_gpio=f.echo_gpio,
            echo_timeout_s=f.echo_timeout_s,
            name=f"fill sensor '{name}'",
            pin_factory=pin_factory,
        )
    if pin is None:
        return ranger
    from bin_daemon.hardware.fakes import FakeFillSensor
    from bin_daemon.hardware.fill import FillSettings

    return FakeFillSensor(
        ranger,
        lambda distance_m: setattr(pin, "echo_time", gpio.echo_time_s(distance_m)),
        FillSettings.from_config(f).distance_m,
        bin_name=name,
        levels_file=levels,
    )


def _camera(config: Config, kind: HardwareKind, clock: Clock, images: Path | None) -> Camera:
    if kind == "fake":
        from bin_daemon.errors import HardwareError
        from bin_daemon.hardware.fakes import FakeCamera

        if images is None:
            raise HardwareError("--hardware fake needs --images DIR (a folder of images)")
        return FakeCamera(images, clock=clock.monotonic)
    from bin_daemon.hardware.picamera import PiCamera

    c = config.camera
    return PiCamera(
        width_px=c.width_px,
        height_px=c.height_px,
        capture_timeout_s=c.capture_timeout_s,
        max_stale_frames=c.max_stale_frames,
    )
