"""The Raspberry Pi camera (picamera2). The only module importing picamera2, and lazily.

The camera is configured once for a preview stream near the model's input size and kept
running; each capture takes ``captured_request(flush=True)`` (a frame whose exposure began
after the call) and also checks the frame's ``SensorTimestamp`` against the trigger time,
discarding stale frames: a queued frame from before the item arrived would classify an
empty flap. Switching to a still mode per capture would cost about half a second instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.ports import Frame


def boottime_minus_monotonic_ns() -> int:
    """SensorTimestamp is on CLOCK_BOOTTIME; time.monotonic() is CLOCK_MONOTONIC."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


def _open_picamera2() -> Any:
    try:
        from picamera2 import Picamera2  # only on a Pi, only when asked
    except ImportError as error:
        raise HardwareError(
            f"the Pi camera needs picamera2 ({error}): on Raspberry Pi OS install "
            "python3-picamera2 with apt and make the venv with --system-site-packages"
        ) from error
    try:
        return Picamera2()
    except (RuntimeError, IndexError, OSError) as error:
        raise HardwareError(f"no camera found or camera busy: {error}") from error


class PiCamera:
    """A running picamera2 preview stream that hands out fresh RGB frames."""

    def __init__(
        self,
        *,
        width_px: int = 640,
        height_px: int = 480,
        capture_timeout_s: float = 2.0,
        max_stale_frames: int = 5,
        open_camera: Callable[[], Any] = _open_picamera2,
        clock_offset_ns: Callable[[], int] = boottime_minus_monotonic_ns,
    ) -> None:
        if width_px <= 0 or height_px <= 0:
            raise ValueError(f"frame size must be positive, got {width_px}x{height_px}")
        if capture_timeout_s <= 0:
            raise ValueError(f"capture_timeout_s must be positive, got {capture_timeout_s}")
        if max_stale_frames < 1:
            raise ValueError(f"max_stale_frames must be at least 1, got {max_stale_frames}")
        self._timeout_s = capture_timeout_s
        self._max_stale = max_stale_frames
        self._offset_ns = clock_offset_ns
        self.stale_frames = 0
        self._camera = open_camera()
        try:
            # "RGB888" is 24-bit with the bytes in B, G, R order in memory (libcamera naming).
            config = self._camera.create_preview_configuration(
                main={"size": (width_px, height_px), "format": "RGB888"}
            )
            self._camera.configure(config)
            self._camera.start()
        except Exception as error:
            self._camera.close()
            raise HardwareError(
                f"camera: cannot start a {width_px}x{height_px} stream: {error}"
            ) from error

    def capture(self, *, not_before: float) -> Frame:
        not_before_ns = int(not_before * 1e9) + self._offset_ns()
        for _ in range(self._max_stale + 1):
            try:
                with self._camera.captured_request(flush=True, wait=self._timeout_s) as request:
                    array = request.make_array("main")
                    metadata = request.get_metadata()
                    sensor_ns = int(metadata["SensorTimestamp"])
            except TimeoutError as error:
                raise HardwareError(f"camera: no frame within {self._timeout_s:g} s") from error
            except KeyError as error:
                raise HardwareError("camera: frame metadata has no SensorTimestamp") from error
            # SensorTimestamp is when the first row was read out: exposure began ExposureTime
            # (microseconds) earlier. The whole exposure must come after the trigger.
            exposure_start_ns = sensor_ns - 1000 * int(metadata.get("ExposureTime", 0))
            if exposure_start_ns >= not_before_ns:
                rgb = np.ascontiguousarray(array[:, :, 2::-1])  # BGR(X) in memory -> RGB
                timestamp = (sensor_ns - self._offset_ns()) / 1e9
                return Frame(rgb=rgb, timestamp=timestamp, source=sensor_ns)
            self.stale_frames += 1
        raise HardwareError(
            f"camera: {self._max_stale + 1} frames in a row were older than the trigger"
        )

    def recover(self) -> None:
        """After a failed item: restart the stream (a wedged pipeline often comes back)."""
        try:
            self._camera.stop()
        finally:
            self._camera.start()

    def close(self) -> None:
        try:
            self._camera.stop()
        finally:
            self._camera.close()
