"""Fill levels (issue 16): the math, the monitor's readings and states, overflow routing.

The monitor runs on ScriptedFillSensor and FakeClock (no gpiozero, no waiting); the
adapters on gpiozero's mock pins are in test_hardware_contract.py, the daemon end to end
in test_fill_service.py.
"""

from __future__ import annotations

import logging

import pytest

from bin_daemon.config import load_config, parse_config
from bin_daemon.errors import ConfigError
from bin_daemon.hardware.fakes import FakeClock, ScriptedFillSensor
from bin_daemon.hardware.fill import (
    RETRY_S,
    FillMonitor,
    FillSettings,
    agreed_median,
    build_fill_monitor,
    fill_percent,
    next_state,
)
from bin_daemon.loop.overflow import route_around_full
from bin_daemon.loop.policy import BinChoice

SETTINGS = FillSettings(empty_distance_m=0.8, full_distance_m=0.1, warn_percent=75,
                        full_percent=90, hysteresis_percent=10, readings=5, agreement_m=0.03,
                        interval_s=60)  # fmt: skip


def at(percent: float) -> float:
    return SETTINGS.distance_m(percent)


# --------------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("distance_m", "percent"),
    [(0.8, 0.0), (0.1, 100.0), (0.45, 50.0), (0.66, 20.0), (0.95, 0.0), (0.02, 100.0)],
)
def test_fill_percent_is_empty_minus_distance_over_the_span_clamped(distance_m, percent):
    assert fill_percent(distance_m, empty_m=0.8, full_m=0.1) == pytest.approx(percent)
    assert SETTINGS.percent(distance_m) == pytest.approx(percent)


def test_distance_for_a_percent_is_the_inverse():
    for percent in (0, 12.5, 50, 90, 100):
        assert SETTINGS.percent(SETTINGS.distance_m(percent)) == pytest.approx(percent)


def test_median_only_when_consecutive_readings_agree():
    assert agreed_median([0.40, 0.41, 0.39, 0.40, 0.42], 0.03) == pytest.approx(0.40)
    assert agreed_median([0.40, 0.41, 0.55, 0.40, 0.42], 0.03) is None  # one stray echo
    assert agreed_median([0.40, 0.40, 0.40, 0.40, 0.44], 0.03) is None  # the last one jumps
    assert agreed_median([0.40, 0.42, 0.44, 0.46], 0.03) == pytest.approx(0.43)  # step by step
    assert agreed_median([0.5], 0.03) == 0.5
    assert agreed_median([], 0.03) is None


@pytest.mark.parametrize(
    ("state", "percent", "after"),
    [
        ("ok", 74.9, "ok"),
        ("ok", 75, "warn"),
        ("ok", 90, "full"),  # straight to full
        ("warn", 66, "warn"),  # within the hysteresis below warn (75 - 10)
        ("warn", 64.9, "ok"),
        ("full", 80, "full"),  # within the hysteresis below full (90 - 10)
        ("full", 79.9, "warn"),
        ("full", 64.9, "ok"),  # emptied
        ("full", 0, "ok"),
    ],
)
def test_states_have_hysteresis_on_the_way_down(state, percent, after):
    assert next_state(state, percent, SETTINGS) == after


# ----------------------------------------------------------------------------- monitor


def monitor(clock, sensor=None, **kwargs) -> tuple[FillMonitor, ScriptedFillSensor]:
    sensor = sensor or ScriptedFillSensor("fill sensor 'glass'", distance_m=at(10))
    m = FillMonitor(
        ["recycling", "glass", "landfill"],
        {"glass": sensor},
        {"glass": SETTINGS},
        clock=clock,
        overflow={"glass": "landfill"},
        **kwargs,
    )
    return m, sensor


def measure(m: FillMonitor, clock: FakeClock, sensor: ScriptedFillSensor, percent: float) -> None:
    """Let the interval pass and the next measurement be taken, one reading per tick."""
    sensor.distance_m = at(percent)
    clock.advance(SETTINGS.interval_s)
    for _ in range(SETTINGS.readings):
        m.tick()


def test_a_measurement_is_one_reading_per_tick_and_then_waits_its_interval(fake_clock):
    m, sensor = monitor(fake_clock)
    assert m.levels() == {"recycling": None, "glass": None, "landfill": None}
    for _ in range(SETTINGS.readings - 1):
        m.tick()
    assert sensor.seq == 4 and m.levels()["glass"] is None  # not yet: 4 of 5 readings
    m.tick()
    assert m.levels() == {"recycling": None, "glass": pytest.approx(10.0), "landfill": None}
    sensor.distance_m = at(50)
    m.tick()
    fake_clock.advance(SETTINGS.interval_s - 1)
    m.tick()
    assert sensor.seq == 5  # not due: no reading taken at all
    fake_clock.advance(1)
    for _ in range(SETTINGS.readings):
        m.tick()
    assert m.levels()["glass"] == pytest.approx(50.0) and sensor.seq == 10
    assert sensor.rests == 2 and not sensor.awake  # no pinging between measurements


def test_disagreeing_readings_are_dropped_and_measured_again_sooner(fake_clock, caplog):
    m, sensor = monitor(fake_clock)
    sensor.script.extend([at(40), at(40), at(70), at(40), at(40)])  # a hand in the way
    for _ in range(5):
        m.tick()
    assert m.levels()["glass"] is None
    fake_clock.advance(RETRY_S)
    sensor.distance_m = at(40)
    for _ in range(5):
        m.tick()
    assert m.levels()["glass"] == pytest.approx(40.0)


def test_warns_once_per_transition_not_per_measurement_and_clears_when_emptied(fake_clock, caplog):
    changes = []
    m, sensor = monitor(fake_clock, on_change=lambda: changes.append(m.states()["glass"]))
    caplog.set_level(logging.INFO, logger="bin_daemon.hardware.fill")
    for percent in (10, 80, 82, 84, 92, 95, 85, 81, 92, 60, 5):
        measure(m, fake_clock, sensor, percent)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bin 'glass' is 80% full (warning at 75%): empty it soon",
        "bin 'glass' is full (92%, full at 90%): its items go to 'landfill' until it is emptied",
        "bin 'glass' emptied (60%): items go to it again",
    ]  # 92 -> 95 -> 85 -> 81 -> 92: full throughout (hysteresis), no line
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]  # fuller: warn
    assert changes == ["warn", "full", "ok"]
    assert m.full_bins() == set() and m.states() == {"glass": "ok"}


def test_a_full_bin_without_overflow_says_so(fake_clock, caplog):
    sensor = ScriptedFillSensor(distance_m=at(96))
    m = FillMonitor(["landfill"], {"landfill": sensor}, {"landfill": SETTINGS}, clock=fake_clock)
    with caplog.at_level(logging.WARNING):
        m.measure_now()
    assert caplog.messages == [
        "bin 'landfill' is full (96%, full at 90%) and has no overflow bin: its items still go "
        "to it; empty it"
    ]
    assert m.status_text() == "full: landfill 96% (no overflow)"


def test_full_bin_status_and_no_longer_full(fake_clock, caplog):
    m, sensor = monitor(fake_clock)
    measure(m, fake_clock, sensor, 93)
    assert m.full_bins() == {"glass"}
    assert m.status_text() == "full: glass 93% (items go to landfill)"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        measure(m, fake_clock, sensor, 70)
    assert caplog.messages == ["bin 'glass' is no longer full (70%): items go to it again"]
    assert m.states() == {"glass": "warn"} and m.status_text() == ""


def test_no_reading_between_an_item_and_the_settle_time_nor_with_the_lid_open(fake_clock):
    lid_open = {"glass": False}
    m, sensor = monitor(fake_clock, lid_closed=lambda name: not lid_open[name])
    m.tick()
    m.tick()
    m.interrupt()  # an item was sorted: the two readings so far are dropped
    assert not sensor.awake
    m.tick()
    assert sensor.seq == 2  # quiet for settle_s
    fake_clock.advance(m.settle_s)
    lid_open["glass"] = True
    m.tick()
    assert sensor.seq == 2  # the lid is open: not read
    lid_open["glass"] = False
    for _ in range(4):
        m.tick()
    assert m.levels()["glass"] is None  # 4 fresh readings, the old 2 do not count
    m.tick()
    assert m.levels()["glass"] == pytest.approx(10.0)


def test_a_failing_sensor_is_a_fault_logged_once_and_clears(fake_clock, caplog):
    m, sensor = monitor(fake_clock)
    measure(m, fake_clock, sensor, 93)
    sensor.error = "fill sensor 'glass': HC-SR04 no echo for 1.2 s"
    fake_clock.advance(SETTINGS.interval_s)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            fake_clock.advance(RETRY_S)
            m.tick()
    assert caplog.text.count("no echo") == 1
    assert m.faults() == {"fill glass": "fill sensor 'glass': HC-SR04 no echo for 1.2 s"}
    assert m.levels()["glass"] == pytest.approx(93.0)  # the last measurement stays
    assert m.full_bins() == {"glass"}  # still full until a reading says otherwise
    sensor.error = None
    measure(m, fake_clock, sensor, 3)
    assert m.faults() == {} and m.full_bins() == set()
    assert "fill sensor 'glass': readings are back" in caplog.text


def test_measure_now_waits_for_the_readings(fake_clock):
    m, sensor = monitor(fake_clock)
    sensor.distance_m = at(95)
    m.measure_now()
    assert sensor.seq == 5 and m.full_bins() == {"glass"}
    sensor.silent = True  # no echo: one fault, no level change
    m.measure_now(timeout_s=0.1)
    assert "no echo within 0.1 s" in m.faults()["fill glass"]


def test_monitor_from_config_uses_each_bins_settings_and_overflow(fake_clock):
    config = parse_config(
        "sensor: {type: ir, gpio: 17}\n"
        "bins:\n"
        "  glass:\n"
        "    labels: [glass]\n"
        "    servo_gpio: 13\n"
        "    fill: {trigger_gpio: 5, echo_gpio: 6, empty_distance_m: 1.0, full_distance_m: 0.2,\n"
        "           full_percent: 80, readings: 3, overflow_bin: recycling}\n"
        "  recycling: {labels: [paper], servo_gpio: 12}\n"
        "  landfill: {labels: [trash], servo_gpio: 18}\n"
        "fallback_bin: landfill\n"
    )
    sensor = ScriptedFillSensor(distance_m=0.35)  # (1.0 - 0.35) / 0.8 = 81%
    m = build_fill_monitor(config, {"glass": sensor}, clock=fake_clock)
    for _ in range(3):
        m.tick()
    assert m.levels() == {"glass": pytest.approx(81.2), "recycling": None, "landfill": None}
    assert m.full_bins() == {"glass"} and m.overflow == {"glass": "recycling"}


# ------------------------------------------------------------------------------- config


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="C")
    return str(caught.value)


BINS = (
    "sensor: {type: ir, gpio: 17}\n"
    "bins:\n"
    "  landfill: {labels: [trash], servo_gpio: 18}\n"
    "  glass:\n"
    "    servo_gpio: 13\n"
    "    fill: {trigger_gpio: 5, echo_gpio: 6, empty_distance_m: 0.8, full_distance_m: 0.1%s}\n"
    "fallback_bin: landfill\n"
)


def test_fill_config_errors_are_one_line_naming_the_key():
    assert config_error(BINS % ", overflow_bin: compost") == (
        "C:6: bins.glass.fill.overflow_bin: 'compost' is not one of the bins (landfill, glass)"
    )
    assert config_error(BINS % ", overflow_bin: glass") == (
        "C:6: bins.glass.fill.overflow_bin: a bin cannot overflow into itself"
    )
    assert config_error(BINS.replace("0.1%s", "0.9%s") % "") == (
        "C:6: bins.glass.fill: full_distance_m (0.9) must be less than empty_distance_m (0.8)"
    )
    assert config_error(BINS % ", warn_percent: 95") == (
        "C:6: bins.glass.fill: warn_percent (95) must not be above full_percent (90)"
    )
    assert config_error(BINS % ", redings: 5") == "C:6: bins.glass.fill.redings: unknown key"
    assert config_error(BINS.replace("echo_gpio: 6", "echo_gpio: 13") % "") == (
        "C:6: bins.glass.fill.echo_gpio: GPIO 13 is already used by bins.glass.servo_gpio"
    )
    config = parse_config(BINS % "")
    assert config.overflow_for() == {"glass": "landfill"}  # null = the fallback bin
    fallback = parse_config(BINS.replace("fallback_bin: landfill", "fallback_bin: glass") % "")
    assert fallback.overflow_for() == {}  # the fallback bin's null: no overflow, keeps items
    assert load_config(None).overflow_for() == {}  # no fill sensors by default


# ------------------------------------------------------------------------------ overflow


def test_an_item_for_a_full_bin_goes_to_its_overflow_and_the_reason_says_why():
    label = BinChoice("glass", False, "label")
    same = route_around_full(label, full=set(), overflow={"glass": "recycling"},
                             fallback_bin="landfill")  # fmt: skip
    assert same is label
    moved = route_around_full(label, full={"glass"}, overflow={"glass": "recycling"},
                              fallback_bin="landfill")  # fmt: skip
    assert moved == BinChoice("recycling", False, "label; bin 'glass' is full -> 'recycling'")
    chain = route_around_full(label, full={"glass", "recycling"},
                              overflow={"glass": "recycling"}, fallback_bin="landfill")  # fmt: skip
    assert chain == BinChoice(
        "landfill", False, "label; bins 'glass', 'recycling' are full -> 'landfill'"
    )
    everything = route_around_full(label, full={"glass", "recycling", "landfill"},
                                   overflow={"glass": "recycling"}, fallback_bin="landfill")  # fmt: skip
    assert everything.bin == "landfill"  # it must go somewhere
    assert everything.reason == (
        "label; every bin on the way is full ('glass', 'recycling', 'landfill'): "
        "fallback 'landfill'"
    )
    cycle = route_around_full(label, full={"glass", "recycling"},
                              overflow={"glass": "recycling", "recycling": "glass"},
                              fallback_bin="landfill")  # fmt: skip
    assert cycle.bin == "landfill"
    unsure = route_around_full(BinChoice("landfill", True, "confidence 0.40 < threshold 0.85"),
                               full={"landfill"}, overflow={}, fallback_bin="landfill")  # fmt: skip
    assert unsure == BinChoice(  # the fallback bin full, without an overflow: it keeps them
        "landfill", True,
        "confidence 0.40 < threshold 0.85; bin 'landfill' is full but has no overflow bin",
    )  # fmt: skip
