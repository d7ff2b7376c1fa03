"""Cameras: the fake (a folder of images) and the picamera2 adapter's freshness logic.

picamera2 cannot run off a Pi, so ``StubPicamera2`` below stands in for it IN THIS FILE ONLY,
implementing just the calls the adapter makes (create_preview_configuration, configure,
start, captured_request(flush=, wait=), stop, close) as picamera2 documents them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.fakes import FakeCamera, image_files
from bin_daemon.hardware.picamera import PiCamera
from bin_daemon.hardware.ports import Camera, Frame

OFFSET_NS = 5_000_000_000  # CLOCK_BOOTTIME ahead of CLOCK_MONOTONIC by 5 s in these tests


class StubRequest:
    def __init__(self, array, timestamp_ns):
        self._array, self._ts = array, timestamp_ns

    def make_array(self, stream):
        assert stream == "main"
        return self._array

    def get_metadata(self):
        return {"SensorTimestamp": self._ts, "ExposureTime": 10000}


class StubPicamera2:
    """Serves frames whose SensorTimestamps come from ``timestamps_ns`` (test stand-in)."""

    def __init__(self, timestamps_ns, *, timeout=False):
        self.timestamps_ns = list(timestamps_ns)
        self.timeout = timeout
        self.calls: list[str] = []
        # BGR order in memory, as picamera2's "RGB888": blue 10, green 20, red 30.
        self.array = np.zeros((48, 64, 3), np.uint8)
        self.array[:, :] = (10, 20, 30)

    def create_preview_configuration(self, main):
        self.calls.append(f"preview {main['size']} {main['format']}")
        return {"main": main}

    def configure(self, config):
        self.calls.append("configure")

    def start(self):
        self.calls.append("start")

    @contextlib.contextmanager
    def captured_request(self, flush=None, wait=None):
        self.calls.append(f"captured_request flush={flush}")
        if self.timeout or not self.timestamps_ns:
            raise TimeoutError
        yield StubRequest(self.array, self.timestamps_ns.pop(0))

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


def pi_camera(stub, **kwargs) -> PiCamera:
    return PiCamera(open_camera=lambda: stub, clock_offset_ns=lambda: OFFSET_NS, **kwargs)


def test_pi_camera_keeps_a_preview_stream_running():
    stub = StubPicamera2([])
    camera = pi_camera(stub, width_px=320, height_px=240)
    assert stub.calls == ["preview (320, 240) RGB888", "configure", "start"]
    camera.close()
    assert stub.calls[-2:] == ["stop", "close"]


def test_pi_camera_discards_frames_older_than_the_trigger():
    trigger_s = 100.0
    trigger_ns = int(trigger_s * 1e9) + OFFSET_NS
    # Exposure is 10 ms in the stub: a frame read out 5 ms after the trigger began before it.
    ms = 1_000_000
    stub = StubPicamera2(
        [trigger_ns - 30 * ms, trigger_ns - 1, trigger_ns + 5 * ms, trigger_ns + 33 * ms]
    )
    camera = pi_camera(stub)
    frame = camera.capture(not_before=trigger_s)
    assert frame.source == trigger_ns + 33 * ms
    assert frame.timestamp == pytest.approx(trigger_s + 0.033)
    assert camera.stale_frames == 3
    assert all("flush=True" in c for c in stub.calls if c.startswith("captured_request"))
    assert frame.rgb.shape == (48, 64, 3)
    assert tuple(frame.rgb[0, 0]) == (30, 20, 10)  # BGR in memory -> RGB
    assert frame.rgb.flags["C_CONTIGUOUS"]


def test_pi_camera_gives_up_after_too_many_stale_frames():
    stale = [1_000] * 10
    camera = pi_camera(StubPicamera2(stale), max_stale_frames=3)
    with pytest.raises(HardwareError, match="4 frames in a row were older than the trigger"):
        camera.capture(not_before=100.0)


def test_pi_camera_timeout_is_a_hardware_error():
    camera = pi_camera(StubPicamera2([], timeout=True), capture_timeout_s=0.5)
    with pytest.raises(HardwareError, match=r"camera: no frame within 0.5 s"):
        camera.capture(not_before=0.0)


def test_picamera_module_imports_off_a_pi_and_explains_what_is_missing():
    with pytest.raises(HardwareError, match="python3-picamera2"):
        PiCamera()


def test_fake_camera_serves_images_by_name_cycling(samples_dir, fake_clock):
    camera = FakeCamera(samples_dir, clock=fake_clock.monotonic)
    files = image_files(samples_dir)
    assert len(files) == 24
    assert [p.relative_to(samples_dir).as_posix() for p in files[:2]] == [
        "cardboard/cardboard101.jpg",
        "cardboard/cardboard104.jpg",
    ]
    sources = [camera.capture(not_before=n).source for n in range(25)]
    assert sources[:24] == [str(p) for p in files]
    assert sources[24] == sources[0]
    # a retry for the same item (the same trigger) gets the same image again
    assert camera.capture(not_before=24).source == sources[24]


def test_fake_camera_without_images(tmp_path, fake_clock):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(HardwareError, match="no images"):
        FakeCamera(tmp_path, clock=fake_clock.monotonic)
    with pytest.raises(HardwareError, match="no such image folder"):
        FakeCamera(tmp_path / "missing", clock=fake_clock.monotonic)


@pytest.fixture(params=["fake", "picamera2-adapter-on-stub"])
def camera(request, samples_dir, fake_clock) -> Camera:
    if request.param == "fake":
        fake_clock.advance(50)
        return FakeCamera(samples_dir, clock=fake_clock.monotonic)
    base = int(50e9) + OFFSET_NS
    return pi_camera(StubPicamera2([base - 1, base + 20_000_000, base + 53_000_000]))


def test_camera_contract_fresh_rgb_frames(camera):
    assert isinstance(camera, Camera)
    frame = camera.capture(not_before=50.0)
    assert isinstance(frame, Frame)
    assert frame.timestamp >= 50.0
    assert frame.rgb.dtype == np.uint8 and frame.rgb.ndim == 3 and frame.rgb.shape[2] == 3
    assert frame.source
    camera.close()


def test_pi_camera_recover_restarts_the_stream():
    # The sorter calls recover() after an item whose every capture failed.
    stub = StubPicamera2([])
    camera = pi_camera(stub)
    camera.recover()
    assert stub.calls[-2:] == ["stop", "start"]
    camera.close()
