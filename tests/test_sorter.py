"""The state machine on fakes, with a FakeClock: nothing here sleeps for real."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.fakes import FakeClock, FakeLid, FakeProximitySensor
from bin_daemon.hardware.ports import Frame
from bin_daemon.loop.policy import Policy
from bin_daemon.loop.sorter import Sorter, State, Timing

TIMING = Timing(hold_open_s=3.0, lid_move_s=0.5, cooldown_s=1.0, debounce_s=0.05)
POLL_S = 0.02


class StubCamera:
    def __init__(self, clock, *, fail=False):
        self.clock, self.fail, self.triggers = clock, fail, []

    def capture(self, *, not_before):
        self.triggers.append(not_before)
        if self.fail:
            raise HardwareError("camera: no frame within 2 s")
        return Frame(np.zeros((8, 8, 3), np.uint8), self.clock.monotonic(), "stub.jpg")

    def close(self):
        pass


class StubPrediction:
    def __init__(self, label, confidence):
        self.label, self.confidence = label, confidence
        self.top = [(label, confidence), ("other", 1 - confidence)]


class StubClassifier:
    sha256 = "ab" * 32

    def __init__(self, answers):
        self.answers = list(answers)

    def classify(self, rgb):
        return StubPrediction(*self.answers.pop(0))


class Rig:
    """A sorter on fakes, and a helper to run its poll loop for a while of fake time."""

    def __init__(self, answers=(("glass", 0.9),), *, pattern=None, camera_fails=False):
        self.clock = FakeClock()
        self.sensor = FakeProximitySensor(pattern=pattern, clock=self.clock.monotonic)
        self.lids = {name: FakeLid(name) for name in ("recycling", "glass", "landfill")}
        self.camera = StubCamera(self.clock, fail=camera_fails)
        self.events = []
        self.stop = threading.Event()
        policy = Policy({"glass": "glass", "paper": "recycling"}, "landfill", 0.6)
        self.sorter = Sorter(
            sensor=self.sensor,
            camera=self.camera,
            classifier=StubClassifier(answers),
            decide=policy.decide,
            lids=self.lids,
            timing=TIMING,
            clock=self.clock,
            stop=self.stop,
            on_event=lambda event, frame: self.events.append(event),
        )

    def run_for(self, seconds):
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end and not self.stop.is_set():
            if self.sorter.poll() is None:
                self.clock.sleep(POLL_S)


def test_start_closes_every_lid_and_detaches():
    rig = Rig()
    rig.sorter.start()
    for lid in rig.lids.values():
        assert lid.history == ["close", "detach"]
    assert rig.sorter.state is State.ARMED


def test_one_item_full_cycle_in_order_with_simulated_time():
    start = 1000.0 + TIMING.lid_move_s  # start() waited for the lids to close
    rig = Rig(pattern=lambda t: 1001.0 <= t < 1001.4)
    rig.sorter.start()
    rig.run_for(10)
    assert len(rig.events) == 1
    event = rig.events[0]
    assert (event.label, event.bin, event.unsure, event.lid) == (
        "glass",
        "glass",
        False,
        "completed",
    )
    assert event.frame_source == "stub.jpg"
    assert rig.lids["glass"].history == ["close", "detach", "open", "close", "detach"]
    assert rig.lids["recycling"].history == ["close", "detach"]
    # debounced: the trigger is at least debounce_s after the sensor went active
    assert 1001.0 + 0.05 <= rig.camera.triggers[0] <= 1001.0 + 0.05 + 2 * POLL_S
    assert rig.clock.monotonic() == pytest.approx(start + 10, abs=POLL_S * 2)
    assert rig.sorter.counts.items == 1


def test_latency_breakdown_ends_at_the_lid_open_command():
    ticks = iter(range(100))
    rig = Rig(pattern=lambda t: 1001.0 <= t < 1001.4)
    rig.sorter._stopwatch = lambda: next(ticks) / 1000  # each reading 1 ms later
    rig.sorter.start()
    rig.run_for(10)
    latency = rig.events[0].latency_ms
    # readings: trigger 0, start 1, captured 2, classified 3, decide 4-5, lid commanded 6
    assert latency == {
        "capture": 1.0, "classify": 1.0, "preprocess": 0.0, "decide": 1.0, "total": 4.0,
        "trigger_to_lid": 6.0,
    }  # fmt: skip


def test_no_trigger_to_lid_when_the_lid_never_opened():
    rig = Rig(pattern=lambda t: t >= 1001.0)
    rig.sorter.start()
    rig.stop.set()
    event = rig.sorter.sort_item(trigger=1001.0)
    assert event.lid == "not opened (stopping)"
    assert "trigger_to_lid" not in event.latency_ms


def test_short_blip_shorter_than_debounce_is_ignored():
    rig = Rig(pattern=lambda t: 1001.00 <= t < 1001.03)
    rig.sorter.start()
    rig.run_for(2)
    assert rig.events == []


def test_retrigger_while_busy_is_ignored():
    # Active for 0.2 s, then two more blips while the lid is open / cooling down.
    def pattern(t):
        return 1001.0 <= t < 1001.2 or 1002.0 <= t < 1002.2 or 1004.5 <= t < 1004.7

    rig = Rig(pattern=pattern)
    rig.sorter.start()
    rig.run_for(10)
    assert len(rig.events) == 1
    assert rig.lids["glass"].history.count("open") == 1


def test_stuck_sensor_sorts_once_and_does_not_flap():
    rig = Rig(pattern=lambda t: t >= 1001.0)
    rig.sorter.start()
    rig.run_for(60)
    assert len(rig.events) == 1
    assert rig.lids["glass"].history.count("open") == 1
    assert rig.sorter.state is State.WAIT_CLEAR


def test_sensor_rearms_after_it_clears():
    def pattern(t):
        return 1001.0 <= t < 1001.3 or 1010 <= t < 1010.3

    rig = Rig(answers=[("glass", 0.9), ("paper", 0.95)], pattern=pattern)
    rig.sorter.start()
    rig.run_for(20)
    assert [e.bin for e in rig.events] == ["glass", "recycling"]
    assert [e.seq for e in rig.events] == [1, 2]


def test_sensor_active_at_start_waits_for_it_to_clear():
    rig = Rig(pattern=lambda t: t < 1005)
    rig.sorter.start()
    assert rig.sorter.state is State.WAIT_CLEAR
    rig.run_for(20)
    assert rig.events == []


def test_low_confidence_goes_to_the_fallback_bin_marked_unsure():
    rig = Rig(answers=[("glass", 0.4)], pattern=lambda t: 1001.0 <= t < 1001.3)
    rig.sorter.start()
    rig.run_for(10)
    (event,) = rig.events
    assert (event.label, event.bin, event.unsure) == ("glass", "landfill", True)
    assert "UNSURE" in event.human_line()


def test_camera_failure_sends_the_item_to_the_fallback_bin():
    rig = Rig(camera_fails=True, pattern=lambda t: 1001.0 <= t < 1001.3)
    rig.sorter.start()
    rig.run_for(10)
    (event,) = rig.events
    assert (event.label, event.bin, event.unsure) == (None, "landfill", True)
    assert event.error == "camera: no frame within 2 s"
    assert rig.sorter.counts.errors == 1


def test_stop_during_hold_cuts_it_short_but_closes_the_lid():
    rig = Rig(pattern=lambda t: 1001.0 <= t < 1001.3)
    rig.sorter.start()
    lid = rig.lids["glass"]
    original_open = lid.open

    def open_then_sigterm():
        original_open()
        rig.stop.set()  # SIGTERM arrives while the lid is open

    lid.open = open_then_sigterm
    rig.run_for(10)
    (event,) = rig.events
    assert event.lid == "hold cut short (stopping)"
    assert lid.history[-3:] == ["open", "close", "detach"]
    assert not lid.is_open
    rig.sorter.shutdown()
    assert all(not lid.is_open and not lid.attached for lid in rig.lids.values())


def test_stop_before_the_lid_opens_leaves_it_closed():
    rig = Rig(pattern=lambda t: 1001.0 <= t < 1001.3)
    rig.sorter.start()
    rig.stop.set()
    event = rig.sorter.sort_item(trigger=rig.clock.monotonic())
    assert event.lid == "not opened (stopping)"
    assert "open" not in rig.lids["glass"].history


def test_a_failing_servo_is_closed_and_reported_not_fatal():
    rig = Rig(pattern=lambda t: 1001.0 <= t < 1001.3)
    rig.sorter.start()

    def broken():
        raise HardwareError("servo not answering")

    rig.lids["glass"].open = broken
    rig.run_for(10)
    (event,) = rig.events
    assert event.lid == "failed"
    assert rig.lids["glass"].history[-2:] == ["close", "detach"]


def test_timing_is_validated():
    with pytest.raises(ValueError, match="hold_open_s must be zero or more seconds"):
        Timing(hold_open_s=-1, lid_move_s=0, cooldown_s=0, debounce_s=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 8.0), st.booleans()), min_size=1, max_size=12))
def test_any_sensor_pattern_never_opens_more_than_items_and_ends_closed(segments):
    """Each opening needs its own inactive->active edge; every lid ends closed and detached."""
    edges, t, bounds = 0, 1001.0, []
    previous = False
    for length, active in segments:
        bounds.append((t, t + length, active))
        edges += int(active and not previous)
        previous, t = active, t + length

    def pattern(now):
        return any(start <= now < end and active for start, end, active in bounds)

    rig = Rig(answers=[("glass", 0.9)] * 20, pattern=pattern)
    rig.sorter.start()
    rig.run_for(t - 1000 + 10)
    rig.sorter.shutdown()
    opens = sum(lid.history.count("open") for lid in rig.lids.values())
    assert opens == len(rig.events) <= edges
    assert all(not lid.is_open and not lid.attached for lid in rig.lids.values())
