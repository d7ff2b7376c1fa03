"""How the bins' fill sensors slow the item sensor's HC-SR04 (issue 16), on gpiozero mock pins.

All HC-SR04s of one process take turns (gpiozero's class-wide ECHO_LOCK); one without echo
holds the lock 100 ms per ping. Counts the item sensor's readings per second with no fill
sensors, three healthy ones pinging, one of them without echo, and the same resting
(``FillRanger.rest()``, as the daemon leaves them between measurements).

    python bench/hcsr04_turns.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import time
import warnings

from bin_daemon.hardware.gpio import (
    FillRanger,
    UltrasonicSensor,
    mock_hcsr04_pins,
    mock_pin_factory,
    plain_mock_pins,
)

FILL_PINS = [(5, 6), (20, 21), (16, 26)]


def readings_per_s(*, fill: int, dead: bool, rest: bool, seconds: float) -> float:
    factory = mock_pin_factory()
    mock_hcsr04_pins(factory, trigger_gpio=23, echo_gpio=24, distance_m=0.5)
    for index, (trigger, echo) in enumerate(FILL_PINS[:fill]):
        if not (dead and index == 0):  # plain mock pins: no echo ever
            mock_hcsr04_pins(factory, trigger_gpio=trigger, echo_gpio=echo, distance_m=0.8)
    with plain_mock_pins(factory):
        sensor = UltrasonicSensor(
            trigger_gpio=23, echo_gpio=24, trigger_distance_m=0.15, pin_factory=factory
        )
        rangers = [
            FillRanger(trigger_gpio=t, echo_gpio=e, pin_factory=factory)
            for t, e in FILL_PINS[:fill]
        ]
    if rest:
        for ranger in rangers:
            ranger.rest()
    time.sleep(1.0)  # let every queue fill
    start_count, start = sensor.readings, time.monotonic()
    time.sleep(seconds)
    rate = (sensor.readings - start_count) / (time.monotonic() - start)
    for ranger in rangers:
        ranger.close()
    sensor.close()
    factory.close()
    factory.reset()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for fill, dead, rest in [(0, False, False), (3, False, False), (3, True, False),
                             (3, True, True)]:  # fmt: skip
        rate = readings_per_s(fill=fill, dead=dead, rest=rest, seconds=args.seconds)
        print(
            f"fill sensors {fill}, one without echo: {'yes' if dead else 'no '}, "
            f"resting: {'yes' if rest else 'no '}: item sensor {rate:.1f} readings/s"
        )


if __name__ == "__main__":
    main()
