"""Fakes for a laptop and for tests: no Pi, no camera, no waiting.

They satisfy the same Protocols (and contract tests) as the real adapters.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.ports import Frame, Lid, ProximitySensor, RangeSample
from bin_daemon.model.preprocess import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class FakeClock:
    """A clock whose sleep() advances time at once: simulated hold and cool-down times."""

    def __init__(self, *, start_monotonic_s: float = 1000.0, start_time_s: float = 1.7e9) -> None:
        self._now = start_monotonic_s
        self._offset = start_time_s - start_monotonic_s
        self.slept_s = 0.0

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot go back in time ({seconds} s)")
        self._now += seconds

    def sleep(self, seconds: float, *, interrupt: threading.Event | None = None) -> bool:
        if interrupt is not None and interrupt.is_set():
            return True
        self.advance(max(0.0, seconds))
        self.slept_s += max(0.0, seconds)
        return bool(interrupt and interrupt.is_set())


def image_files(folder: Path) -> list[Path]:
    """Images under ``folder`` (recursively), sorted by their path relative to it."""
    if not folder.is_dir():
        raise HardwareError(f"{folder}: no such image folder")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise HardwareError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder"
        )
    return files


class FakeCamera:
    """Serves the images of a folder in name order, cycling; each frame is fresh.

    One image per item: a retry for the same item (the same ``not_before``) reads the same
    file again, so a bad image file stands for a camera that keeps failing on that item.
    """

    def __init__(self, folder: str | Path, *, clock: Callable[[], float]) -> None:
        self.files = image_files(Path(folder))
        self._clock = clock
        self._next: Iterator[Path] = self._cycle()
        self._current: tuple[float, Path] | None = None
        self.captures = 0

    def _cycle(self) -> Iterator[Path]:
        while True:
            yield from self.files

    def capture(self, *, not_before: float) -> Frame:
        if self._current is not None and self._current[0] == not_before:
            path = self._current[1]
        else:
            path = next(self._next)
            self._current = (not_before, path)
        self.captures += 1
        timestamp = max(self._clock(), not_before)
        return Frame(rgb=load_image(path), timestamp=timestamp, source=str(path))

    def close(self) -> None:
        pass


class FakeProximitySensor:
    """A sensor set by hand (``active``) or by a function of the clock (``pattern``)."""

    def __init__(
        self,
        *,
        active: bool = False,
        pattern: Callable[[float], bool] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if pattern is not None and clock is None:
            raise ValueError("a pattern needs a clock")
        self.active = active
        self._pattern = pattern
        self._clock = clock
        self.reads = 0

    @property
    def is_active(self) -> bool:
        self.reads += 1
        if self._pattern is not None and self._clock is not None:
            return self._pattern(self._clock())
        return self.active

    def drive(self, active: bool) -> None:
        self.active = active

    def describe(self) -> str:
        return "active (item present)" if self.is_active else "inactive"

    def close(self) -> None:
        pass


class FakeLid:
    """Records every command: ``history`` like ['close', 'detach', 'open', ...]."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._is_open = False
        self.attached = False
        self.history: list[str] = []
        self.closed_for_good = False

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        self._is_open, self.attached = True, True
        self.history.append("open")

    def close(self) -> None:
        self._is_open, self.attached = False, True
        self.history.append("close")

    def move_to(self, angle_deg: float) -> None:
        self._is_open, self.attached = True, True
        self.history.append(f"move {angle_deg:g}")

    def detach(self) -> None:
        self.attached = False
        self.history.append("detach")

    def shutdown(self) -> None:
        self.closed_for_good = True


class ItemFeed:
    """The fake world for ``run --hardware fake``: items dropped onto the flap one at a time.

    Wraps a sensor that can be driven (a real gpiozero input on a mock pin, or a fake): when
    the flap is empty it places the next item (the sensor becomes active); the item falls
    into a bin, and the sensor goes inactive, when any lid watched by :meth:`watch` opens.
    """

    def __init__(self, sensor: ProximitySensor, *, max_items: int | None = None) -> None:
        if not hasattr(sensor, "drive"):
            raise TypeError("ItemFeed needs a sensor with drive(active)")
        self._sensor = sensor
        self.max_items = max_items
        self.placed = 0
        self._present = False
        self._seen_empty = False
        sensor.drive(False)  # type: ignore[attr-defined]

    @property
    def is_active(self) -> bool:
        """The flap is seen empty once, then the next item lands on it."""
        more = self.max_items is None or self.placed < self.max_items
        if not self._present and self._seen_empty and more:
            self._present, self._seen_empty = True, False
            self.placed += 1
            self._sensor.drive(True)  # type: ignore[attr-defined]
        active = self._sensor.is_active
        if not active:
            self._seen_empty = True
        return active

    def describe(self) -> str:
        return self._sensor.describe()

    def item_fell(self) -> None:
        if self._present:
            self._present = False
            self._sensor.drive(False)  # type: ignore[attr-defined]

    def watch(self, lid: Lid) -> Lid:
        return _WatchedLid(lid, on_open=self.item_fell)

    def close(self) -> None:
        self._sensor.close()


class _WatchedLid:
    def __init__(self, lid: Lid, *, on_open: Callable[[], None]) -> None:
        self._lid = lid
        self._on_open = on_open
        self.name = lid.name

    @property
    def is_open(self) -> bool:
        return self._lid.is_open

    def open(self) -> None:
        self._lid.open()
        self._on_open()

    def close(self) -> None:
        self._lid.close()

    def detach(self) -> None:
        self._lid.detach()

    def shutdown(self) -> None:
        self._lid.shutdown()

    def __getattr__(self, name: str):  # pin, move_to, ... of the wrapped lid
        return getattr(self._lid, name)


# --- HC-SR04s on mock pins (issue 16) ------------------------------------------------------


class DrivenRanger:
    """The trigger HC-SR04 on fake hardware: the real adapter on gpiozero mock pins, with an
    item put in front of it (``drive(True)``: nearer than the trigger distance) or taken away.

    gpiozero takes the median of its last readings, so after a drive the first read waits
    (real time, a few of gpiozero's readings: about 0.3 s) until the reading has followed, as
    a physical sensor's would; reads after that are immediate.
    """

    SETTLE_TIMEOUT_S = 5.0

    def __init__(
        self,
        sensor: ProximitySensor,
        move_object: Callable[[float], None],
        *,
        item_m: float,
        empty_m: float,
    ) -> None:
        self._sensor = sensor
        self._move = move_object
        self.item_m = item_m
        self.empty_m = empty_m
        self._pending: bool | None = None

    def drive(self, active: bool) -> None:
        self._move(self.item_m if active else self.empty_m)
        self._pending = active

    @property
    def is_active(self) -> bool:
        if self._pending is not None:
            self._settle(self._pending)
            self._pending = None
        return self._sensor.is_active

    def _settle(self, active: bool) -> None:
        deadline = time.monotonic() + self.SETTLE_TIMEOUT_S
        wait = getattr(self._sensor, "wait_readings", None)
        while time.monotonic() < deadline:
            try:
                if self._sensor.is_active == active:
                    return
            except HardwareError:
                pass  # gpiozero's first readings are not in yet
            if callable(wait):
                wait(1, max(0.0, deadline - time.monotonic()))

    def describe(self) -> str:
        self.is_active  # noqa: B018 - settle first
        return self._sensor.describe()

    def close(self) -> None:
        self._sensor.close()


def read_fill_levels(path: Path) -> dict[str, float]:
    """A fill-levels file: JSON ``{"glass": 95, "recycling": 40}`` (bin -> percent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HardwareError(f"{path}: cannot read the fake fill levels ({error})") from error
    if not isinstance(data, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100
        for v in data.values()
    ):
        raise HardwareError(
            f'{path}: expected a JSON object of bin -> percent 0..100, e.g. {{"glass": 95}}'
        )
    return {str(k): float(v) for k, v in data.items()}


class FakeFillSensor:
    """A bin's fill sensor on fake hardware: the real ``gpio.FillRanger`` on gpiozero mock
    pins, the mock echo lasting as long as a real one would at the set fill level.

    The level is set with :meth:`set_percent`, or read from ``levels_file`` (see
    :func:`read_fill_levels`) whenever that file changes, so a demo can fill a bin while
    the daemon runs. Readings pinged before a change are not handed out.
    """

    def __init__(
        self,
        ranger: Any,
        move_object: Callable[[float], None],
        distance_for: Callable[[float], float],
        *,
        bin_name: str,
        percent: float = 0.0,
        levels_file: Path | None = None,
    ) -> None:
        self._ranger = ranger
        self._move = move_object
        self._distance_for = distance_for
        self.name = ranger.name
        self.bin_name = bin_name
        self.levels_file = levels_file
        self._file_stamp: tuple[int, int] | None = None
        self._file_warned = False
        self._fresh_after = 0
        self.percent = percent
        self.set_percent(percent)

    def set_percent(self, percent: float) -> None:
        self.percent = percent
        self._move(self._distance_for(percent))
        self._fresh_after = self._ranger.seq + 1  # a ping in flight may have the old echo

    def _refresh(self) -> None:
        if self.levels_file is None:
            return
        try:
            stat = self.levels_file.stat()
        except OSError:
            return  # no file (yet): the level stays
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._file_stamp:
            return
        self._file_stamp = stamp
        try:
            levels = read_fill_levels(self.levels_file)
        except HardwareError as error:
            if not self._file_warned:
                log.warning("%s", error)
            self._file_warned = True
            return
        self._file_warned = False
        if self.bin_name in levels and levels[self.bin_name] != self.percent:
            self.set_percent(levels[self.bin_name])

    def sample(self) -> RangeSample | None:
        self._refresh()
        sample = self._ranger.sample()
        if sample is None or sample.seq <= self._fresh_after:
            return None
        return sample

    def wait_sample(self, timeout_s: float | None = None) -> RangeSample:
        self._refresh()
        while True:
            sample = self._ranger.wait_sample(timeout_s)
            if sample.seq > self._fresh_after:
                return sample

    def rest(self) -> None:
        self._ranger.rest()

    def close(self) -> None:
        self._ranger.close()


class ScriptedFillSensor:
    """A fill sensor in plain Python for the monitor's unit tests: each ``sample()`` is a new
    reading, the next of ``script`` or else ``distance_m``; ``error`` makes reads fail."""

    def __init__(self, name: str = "fill sensor", distance_m: float = 1.0) -> None:
        self.name = name
        self.distance_m = distance_m
        self.script: collections.deque[float] = collections.deque()
        self.error: str | None = None
        self.silent = False
        self.seq = 0
        self.awake = True
        self.rests = 0

    def sample(self) -> RangeSample | None:
        self.awake = True
        if self.error is not None:
            raise HardwareError(self.error)
        if self.silent:
            return None
        self.seq += 1
        distance = self.script.popleft() if self.script else self.distance_m
        return RangeSample(self.seq, distance)

    def wait_sample(self, timeout_s: float | None = None) -> RangeSample:
        sample = self.sample()
        if sample is None:
            raise HardwareError(f"{self.name}: no echo within {timeout_s or 1.0:g} s")
        return sample

    def rest(self) -> None:
        if self.awake:
            self.rests += 1
        self.awake = False

    def close(self) -> None:
        self.awake = False
