"""Fakes for a laptop and for tests: no Pi, no camera, no waiting.

They satisfy the same Protocols (and contract tests) as the real adapters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from bin_daemon.errors import HardwareError
from bin_daemon.hardware.ports import Frame, Lid, ProximitySensor
from bin_daemon.model.preprocess import load_image

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
