"""Faults the bin must survive (issue 5), on fakes: each with its journal message.

Camera retries and recovery, sensor stuck/failing, the lid's hard cap, the watchdog with a
hung classifier, a full spool, bad images, bad models. No real sleeping: a FakeClock, or
Events with bounded waits where a second thread is the point of the test.
"""

from __future__ import annotations

import io
import logging
import threading

import cv2
import numpy as np
import pytest
from conftest_models import TINY, make_model_dir
from test_service import RecordingNotifier, read_events, tiny_config

from bin_daemon import cli
from bin_daemon.errors import HardwareError
from bin_daemon.hardware.fakes import FakeClock, FakeLid, FakeProximitySensor
from bin_daemon.hardware.ports import Frame
from bin_daemon.loop.lidguard import LidGuard
from bin_daemon.loop.policy import Policy
from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.loop.sorter import CameraRetry, Sorter, Timing

TIMING = Timing(hold_open_s=3.0, lid_move_s=0.5, cooldown_s=1.0, debounce_s=0.05,
                stuck_after_s=30.0)  # fmt: skip
GREY = np.full((48, 64, 3), 128, np.uint8)
BOUND_S = 10.0  # the longest any test here waits for another thread


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


class ScriptedCamera:
    """Each capture takes the next step: a Frame-maker, or an exception to raise."""

    def __init__(self, clock, steps):
        self.clock, self.steps, self.captures, self.recovered = clock, list(steps), 0, 0

    def capture(self, *, not_before):
        self.captures += 1
        step = self.steps.pop(0) if self.steps else "ok"
        if isinstance(step, BaseException):
            raise step
        if step == "ok":
            return Frame(GREY, self.clock.monotonic(), "ok.jpg")
        if step == "stale":
            return Frame(GREY, not_before - 0.5, "old.jpg")
        if step == "black":
            return Frame(np.zeros((48, 64, 3), np.uint8), self.clock.monotonic(), "black.jpg")
        if step == "grey2d":
            return Frame(np.zeros((48, 64), np.uint8), self.clock.monotonic(), "grey.jpg")
        raise AssertionError(step)

    def recover(self):
        self.recovered += 1

    def close(self):
        pass


class Answer:
    label, confidence, top = "glass", 0.9, [("glass", 0.9)]


class StubClassifier:
    sha256 = "ab" * 32

    def classify(self, rgb):
        return Answer()


def make_sorter(camera_steps=(), *, pattern=None, attempts=3, backoff_s=0.2, sensor=None):
    clock = FakeClock()
    sensor = sensor or FakeProximitySensor(pattern=pattern, clock=clock.monotonic)
    events = []
    sorter = Sorter(
        sensor=sensor,
        camera=ScriptedCamera(clock, camera_steps),
        classifier=StubClassifier(),
        decide=Policy({"glass": "glass"}, "landfill", 0.6).decide,
        lids={name: FakeLid(name) for name in ("glass", "landfill")},
        timing=TIMING,
        clock=clock,
        on_event=lambda event, frame: events.append(event),
        camera_retry=CameraRetry(attempts=attempts, backoff_s=backoff_s, black_level=3.0),
    )
    return sorter, clock, events


def run_for(sorter, clock, seconds):
    end = clock.monotonic() + seconds
    while clock.monotonic() < end and not sorter.stop.is_set():
        if sorter.poll() is None:
            clock.sleep(0.02)


def item(sorter, clock):
    return sorter.sort_item(trigger=clock.monotonic())


# -- camera ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (HardwareError("camera: capture failed"), "camera: capture failed"),
        (TimeoutError("no frame"), "camera: TimeoutError: no frame"),
        ("stale", "camera: stale frame (exposed 0.50 s before the item arrived)"),
        ("black", "camera: black frame (mean brightness 0.0 < 3; lens covered?)"),
        ("grey2d", "camera: bad frame (uint8 (48, 64), expected RGB uint8 (H, W, 3))"),
    ],
    ids=["error", "timeout", "stale", "black", "not-rgb"],
)
def test_a_bad_capture_is_retried_with_backoff(failure, message, caplog):
    sorter, clock, _ = make_sorter([failure, failure, "ok"], backoff_s=0.2)
    sorter.start()
    before = clock.monotonic()
    with caplog.at_level(logging.WARNING):
        event = item(sorter, clock)
    assert (event.label, event.bin, event.error) == ("glass", "glass", None)
    assert sorter.camera.captures == 3 and sorter.faults == {}
    assert f"item 1: {message}; retrying in 0.20 s (try 2 of 3)" in caplog.text
    assert "retrying in 0.40 s (try 3 of 3)" in caplog.text  # doubled
    # 0.2 + 0.4 s of backoff, then the lid's hold and moves, before the cool-down
    assert clock.monotonic() - before >= 0.6 + TIMING.hold_open_s


def test_camera_down_sends_items_to_the_fallback_and_recovers_by_itself(caplog):
    down = HardwareError("camera: no frame within 2 s")
    sorter, clock, _ = make_sorter([down] * 6 + ["ok"])
    sorter.start()
    with caplog.at_level(logging.WARNING):
        first, second, third = item(sorter, clock), item(sorter, clock), item(sorter, clock)
    assert (first.label, first.bin, first.unsure) == (None, "landfill", True)
    assert first.error == "camera: no frame within 2 s" and first.lid == "completed"
    assert second.bin == "landfill"
    assert sorter.camera.recovered == 2  # a stream restart after each failed item
    assert "camera: no frame within 2 s" in caplog.text
    # while down, the status says so
    assert sorter.faults == {}  # the third item got a frame: recovered
    assert (third.label, third.bin) == ("glass", "glass")
    assert "camera: working again (2 item(s) went to the fallback bin meanwhile)" in caplog.text


def test_degraded_status_while_the_camera_is_down():
    sorter, clock, _ = make_sorter([HardwareError("camera: no frame within 2 s")] * 3)
    sorter.start()
    item(sorter, clock)
    status = sorter.counts.status(sorter.state, sorter.faults)
    assert status.startswith("degraded: camera: no frame within 2 s; 1 items (1 unsure, 1 errors)")


def test_stop_during_a_retry_backoff_gives_up_at_once():
    sorter, clock, _ = make_sorter([HardwareError("camera: busy")] * 5, attempts=5, backoff_s=10)
    sorter.start()
    camera_capture = sorter.camera.capture

    def capture_then_sigterm(**kwargs):
        sorter.stop.set()
        return camera_capture(**kwargs)

    sorter.camera.capture = capture_then_sigterm
    before = clock.monotonic()
    event = item(sorter, clock)
    assert sorter.camera.captures == 1  # no second try
    assert clock.monotonic() - before < 1.0  # no 10 s backoff
    assert event.lid == "not opened (stopping)"


# -- sensor ---------------------------------------------------------------------------------


def test_sensor_stuck_active_is_a_fault_without_flapping_and_clears(caplog):
    # An item at 1001 s, then the sensor stays active until 1100 s.
    sorter, clock, events = make_sorter(pattern=lambda t: 1001.0 <= t < 1100.0)
    changes = []
    sorter.on_faults = lambda: changes.append(dict(sorter.faults))
    sorter.start()
    with caplog.at_level(logging.INFO):
        run_for(sorter, clock, 60)
        assert len(events) == 1  # one item, no flapping
        assert sorter.faults["sensor"].startswith("sensor: stuck active for 30 s")
        run_for(sorter, clock, 60)
    assert len(events) == 1
    assert sum(lid.history.count("open") for lid in sorter.lids.values()) == 1
    assert sorter.faults == {} and len(changes) == 2 and changes[-1] == {}
    assert "no lid moves until it clears" in caplog.text
    assert "sensor: clear again; sorting resumes" in caplog.text


def test_stuck_after_s_comes_from_the_config(tmp_path):
    from bin_daemon.config import load_config
    from bin_daemon.loop.service import make_timing

    config = load_config(tiny_config(tmp_path, extra="").parent / "config.yaml")
    assert make_timing(config).stuck_after_s == 30.0
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("gpio: 17}", "gpio: 17, stuck_after_s: 5}"))
    assert make_timing(load_config(path)).stuck_after_s == 5.0


class FlakySensor(FakeProximitySensor):
    """Raises on the reads listed in ``failing`` (by read number)."""

    def __init__(self, failing, **kwargs):
        super().__init__(**kwargs)
        self.failing = failing

    @property
    def is_active(self):
        self.reads += 1
        if self.reads in self.failing:
            raise HardwareError("HC-SR04: no echo for 1.2 s (check the echo wire)")
        return self._pattern(self._clock())


def test_failing_sensor_reads_are_a_fault_not_an_item_and_recover(caplog):
    clock = FakeClock()
    sensor = FlakySensor(set(range(5, 60)), pattern=lambda t: 1005 <= t < 1005.3,
                         clock=clock.monotonic)  # fmt: skip
    sorter, _, events = make_sorter(sensor=sensor)
    sorter.clock = clock
    sorter.start()
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            sorter.poll()
            clock.sleep(0.02)
        assert sorter.faults["sensor"].startswith("HC-SR04: no echo for 1.2 s")
        assert events == []
        run_for(sorter, clock, 10)
    assert "sensor" not in sorter.faults and len(events) == 1
    assert caplog.text.count("HC-SR04: no echo") == 1  # once, not once per read
    assert "sensor: readings are back" in caplog.text


def test_hcsr04_with_no_echo_raises_instead_of_blocking():
    from gpiozero.pins.mock import MockFactory

    from bin_daemon.hardware.gpio import UltrasonicSensor

    factory = MockFactory()  # plain mock pins: the echo never comes
    sensor = UltrasonicSensor(trigger_gpio=23, echo_gpio=24, trigger_distance_m=0.3,
                              echo_timeout_s=0.2, pin_factory=factory)  # fmt: skip
    try:
        with pytest.raises(HardwareError, match=r"HC-SR04: no echo within 0.2 s"):
            sensor.is_active  # noqa: B018 - bounded by echo_timeout_s, not forever
    finally:
        sensor.close()
        factory.close()
        factory.reset()


# -- lids -----------------------------------------------------------------------------------


def test_lid_guard_closes_a_lid_open_too_long(caplog):
    clock = FakeClock()
    guard = LidGuard(clock=clock, max_open_s=15)
    lids = guard.wrap({"glass": FakeLid("glass")})
    lids["glass"].open()
    clock.advance(15)
    assert guard.check() == []  # not longer than the maximum yet
    clock.advance(0.5)
    with caplog.at_level(logging.ERROR):
        assert guard.check() == ["glass"]
    assert not lids["glass"].is_open
    assert "lid 'glass' was open 15.5 s, longer than timing.max_open_s (15 s): driven closed" in (
        caplog.text
    )


class StuckClock(FakeClock):
    """The hold's sleep never returns until released: a sorter stuck with a lid open."""

    def __init__(self):
        super().__init__()
        self.stuck = threading.Event()
        self.release = threading.Event()

    def sleep(self, seconds, *, interrupt=None):
        if seconds == TIMING.hold_open_s or (self.stuck.is_set() is False and seconds == 1.0):
            self.stuck.set()
            self.release.wait(BOUND_S)
            return False
        return super().sleep(seconds, interrupt=interrupt)


def test_lid_guard_timer_closes_the_lid_of_a_stuck_sorter():
    clock = StuckClock()
    guard = LidGuard(clock=clock, max_open_s=15)
    lid = FakeLid("glass")
    sorter = Sorter(
        sensor=FakeProximitySensor(),
        camera=ScriptedCamera(clock, []),
        classifier=StubClassifier(),
        decide=Policy({"glass": "glass"}, "landfill", 0.6).decide,
        lids=guard.wrap({"glass": lid, "landfill": FakeLid("landfill")}),
        timing=TIMING,
        clock=clock,
    )
    worker = threading.Thread(target=sorter.sort_item, kwargs={"trigger": clock.monotonic()})
    worker.start()
    try:
        assert clock.stuck.wait(BOUND_S) and lid.is_open  # open, and the sorter is stuck
        clock.advance(20)  # time passes; nothing in the sorter moves
        guard.start(interval_s=0.01)  # only the timer can close it now
        end = threading.Event()
        for _ in range(int(BOUND_S / 0.01)):
            if not lid.is_open or end.wait(0.01):
                break
        assert not lid.is_open and guard.forced == 1
        assert lid.history[-1] == "close"
    finally:
        guard.stop()
        clock.release.set()
        worker.join(BOUND_S)


def test_max_open_s_must_exceed_the_hold(tmp_path):
    from bin_daemon.config import parse_config
    from bin_daemon.errors import ConfigError

    text = tiny_config(tmp_path).read_text() + "timing: {hold_open_s: 20}\n"
    with pytest.raises(ConfigError, match=r"timing: max_open_s \(15\) must be more than"):
        parse_config(text, source="c.yaml")


# -- watchdog -------------------------------------------------------------------------------


class BlockingClassifier:
    """The second item's classify hangs until released (a wedged interpreter)."""

    sha256 = "cd" * 32

    def __init__(self):
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def classify(self, rgb):
        self.calls += 1
        if self.calls == 2:
            self.entered.set()
            self.release.wait(BOUND_S)
        return Answer()


def test_watchdog_is_not_fed_while_classify_hangs(tmp_path, samples_dir):
    from bin_daemon.loop.service import load_classifier

    classifier = BlockingClassifier()

    def factory(config):
        real = load_classifier(config)
        classifier.card_unsure_threshold = real.card_unsure_threshold
        classifier.model_path, classifier.version = real.model_path, "blocking"
        classifier.runtime, classifier.labels = real.runtime, real.labels
        return classifier

    now = [0.0]  # the watchdog's own clock, moved by the test
    notifier = RecordingNotifier()
    options = RunOptions(tiny_config(tmp_path), "fake", samples_dir, max_items=3)
    service = Service(options, notifier=notifier, stdout=io.StringIO(),
                      monotonic=lambda: now[0], classifier_factory=factory)  # fmt: skip
    worker = threading.Thread(target=service.run)
    worker.start()
    try:
        assert classifier.entered.wait(BOUND_S)  # item 2 is stuck in classify
        fed = notifier.messages.count("WATCHDOG=1")
        assert fed >= 1  # it was fed while healthy
        ticks = service.lid_guard.ticks
        now[0] += 100  # far past WatchdogSec
        for _ in range(int(BOUND_S / 0.01)):  # let the guard's timer thread run a few times
            if service.lid_guard.ticks >= ticks + 3 or classifier.release.wait(0.01):
                break
        assert service.lid_guard.ticks >= ticks + 3
        assert notifier.messages.count("WATCHDOG=1") == fed  # silent: systemd would restart
    finally:
        classifier.release.set()
        worker.join(BOUND_S)
    assert notifier.messages.count("WATCHDOG=1") > fed  # fed again once the loop moved


# -- storage and images -----------------------------------------------------------------


def test_spool_full_mid_run_disables_it_and_sorting_goes_on(tmp_path, samples_dir, monkeypatch,
                                                            caplog):  # fmt: skip
    import errno
    from pathlib import Path

    spool = tmp_path / "spool"
    config = tiny_config(tmp_path, extra=f"spool: {{dir: {spool}, save: all}}\n")
    original = Path.write_bytes

    def full_after_two(self, data):
        if self.parent == spool and len(list(spool.glob("*.jpg"))) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_two)
    events = tmp_path / "events.jsonl"
    options = RunOptions(config, "fake", samples_dir, max_items=5, events_path=events)
    service = Service(options, stdout=io.StringIO())
    with caplog.at_level(logging.WARNING):
        assert service.run() == 0
    assert len(read_events(events)) == 5
    assert len(list(spool.glob("*.jpg"))) == 2 and not service._spool.enabled
    assert "spool: cannot write to" in caplog.text
    assert "No space left on device); frames will not be saved, sorting goes on" in caplog.text


def bad_images(folder):
    folder.mkdir()
    good = folder.parent / "good.jpg"
    _, data = cv2.imencode(".jpg", np.full((64, 64, 3), 120, np.uint8))
    good.write_bytes(data.tobytes())
    jpeg = good.read_bytes()
    (folder / "a_zero.jpg").write_bytes(b"")
    (folder / "b_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    _, grey = cv2.imencode(".png", np.full((40, 30), 90, np.uint8))
    (folder / "c_grey.png").write_bytes(grey.tobytes())
    bomb = bytearray(jpeg)  # a tiny JPEG whose header claims 20000 x 20000 pixels
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    (folder / "d_huge.jpg").write_bytes(bytes(bomb))
    (folder / "e_text.webp").write_text("this is not an image")
    (folder / "f_good.jpg").write_bytes(jpeg)


def test_bad_images_go_to_the_fallback_bin_and_sorting_goes_on(tmp_path, capsys):
    images = tmp_path / "images"
    bad_images(images)
    events = tmp_path / "events.jsonl"
    argv = ["run", "--config", str(tiny_config(tmp_path)), "--hardware", "fake",
            "--images", str(images), "--max-items", "6", "--events", str(events)]  # fmt: skip
    assert cli.main(argv) == 0
    records = {r["frame_source"] or r["error"]: r for r in read_events(events)}
    assert len(records) == 6
    errors = sorted(r["error"] for r in records.values() if r["error"])
    assert [e.split(": ", 1)[1] for e in errors] == [
        "empty file (0 bytes), not an image",
        "not a decodable image (truncated, corrupt or unknown format)",
        "larger than the 64 MP this program accepts (refused before decoding)",
        "not a decodable image (truncated, corrupt or unknown format)",
    ]
    assert all(r["bin"] == "landfill" and r["unsure"] for r in records.values() if r["error"])
    assert sum(1 for r in records.values() if r["label"]) == 2  # the grey PNG and the good one
    assert "Traceback" not in capsys.readouterr().err


# -- model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "waste_classifier.tflite: model file missing"),
        ("corrupt", "waste_classifier.tflite: not a TFLite model"),
        ("shape", "input is 32x32 but its card says 64x64"),
        ("labels", "the model outputs 6 scores but labels.txt has 5 labels"),
    ],
)
def test_a_bad_model_is_one_line_in_check_config_and_run(tmp_path, samples_dir, capsys, breakage,
                                                         expected):  # fmt: skip
    kwargs = {}
    if breakage == "shape":
        kwargs["size"] = 64
    if breakage == "labels":
        kwargs["labels"] = ["cardboard", "glass", "metal", "paper", "plastic"]
    config = tiny_config(tmp_path).read_text()
    (tmp_path / "broken").mkdir()
    model = make_model_dir(tmp_path / "broken", TINY, **kwargs)
    if breakage == "missing":
        (model / "waste_classifier.tflite").unlink()
    if breakage == "corrupt":
        (model / "waste_classifier.tflite").write_bytes(b"\0" * 64)
        card = (model / "model_card.json").read_text()
        import hashlib
        import json

        data = json.loads(card)
        data["sha256"] = hashlib.sha256(b"\0" * 64).hexdigest()
        (model / "model_card.json").write_text(json.dumps(data))
    config = config.replace(str(tmp_path / "model"), str(model))
    config = config.replace("[cardboard, paper, metal, plastic]", "[cardboard, paper, metal]")
    path = tmp_path / "broken.yaml"
    path.write_text(config)
    capsys.readouterr()
    assert cli.main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bin-daemon: error: {model}") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert cli.main(["run", "--config", str(path), "--hardware", "fake", "--images",
                     str(samples_dir), "--max-items", "1"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


# -- process --------------------------------------------------------------------------------


def test_real_sighup_mid_item_reloads_without_dropping_an_item(tmp_path, samples_dir, caplog):
    import os
    import signal

    from bin_daemon.loop import service as service_module

    config = tiny_config(tmp_path, threshold=0.0)
    events = tmp_path / "events.jsonl"
    sent = []
    before = signal.getsignal(signal.SIGHUP)  # SIG_DFL, or SIG_IGN under nohup

    class Notifier(RecordingNotifier):
        def status(self, text):
            super().status(text)
            if not sent:  # item 1 is being recorded: a reload arrives mid-item
                sent.append(True)
                config.write_text(config.read_text().replace("threshold: 0.0", "threshold: 1.0"))
                os.kill(os.getpid(), signal.SIGHUP)

    options = RunOptions(config, "fake", samples_dir, max_items=4, events_path=events)
    with caplog.at_level(logging.INFO):
        assert service_module.run(options, notifier=Notifier(), stdout=io.StringIO()) == 0
    records = read_events(events)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]  # none dropped
    assert [r["unsure"] for r in records] == [False, True, True, True]
    assert all(r["lid"] == "completed" for r in records)
    assert "reloaded: model" in caplog.text
    assert signal.getsignal(signal.SIGHUP) is before  # handlers restored
