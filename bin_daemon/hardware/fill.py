"""How full each bin is: HC-SR04 readings -> fill percent -> ok / warn / full, with hysteresis.

Pure logic on top of the :class:`~bin_daemon.hardware.ports.FillSensor` port (the gpiozero
adapter is ``gpio.FillRanger``; no third-party import here).

When readings are taken, and why so:

* Only between items. The service calls :meth:`FillMonitor.tick` from the idle part of its
  loop (after a poll that sorted nothing) and :meth:`FillMonitor.interrupt` after every
  item, which drops the readings gathered so far and waits ``settle_s`` before the next
  one; a bin whose lid is open is never read. So no reading straddles an item, a lid that
  moves, or waste that is still falling.
* Never blocking the loop. gpiozero pings in its own thread; :meth:`tick` only picks up a
  reading that has already come (``sample()`` does not wait), at most one per bin per
  tick, so an item that arrives meanwhile is seen at the next poll as if no sensor were
  there. A measurement of ``readings`` readings therefore spans several polls (about
  65 ms per reading). The one blocking measurement is :meth:`measure_now`, at start,
  before READY (no item is sorted yet), bounded by each sensor's echo timeout.
* Pinging only while measuring: a sensor is told to ``rest()`` when its measurement ends,
  fails or is dropped (its next read wakes it), so the bins' HC-SR04s do not take turns
  with the item sensor's all the time (see ``gpio.FillRanger``). Neither waits: on mock
  pins, under load, a rest took at most 1.7 ms and a waking read at most 5 ms.

A measurement is the median of ``readings`` consecutive readings, and is accepted only if
each reading is within ``agreement_m`` of the one before (a hand, a swinging bag or a stray
echo makes it disagree: it is dropped and taken again later). fill % = (empty - d) /
(empty - full) * 100, clamped to 0..100.

States: ``ok`` -> ``warn`` at ``warn_percent`` -> ``full`` at ``full_percent``; a state is
left only when the level falls ``hysteresis_percent`` below its threshold, so a level that
hovers at a threshold does not flap. Each change is one log line (a warning when it gets
fuller), never one per item; ``on_change`` lets the service refresh STATUS=.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bin_daemon.errors import BinDaemonError
from bin_daemon.hardware.ports import Clock, FillSensor

log = logging.getLogger(__name__)

FillState = Literal["ok", "warn", "full"]

SETTLE_S = 1.0
"""After an item, no reading for this long (the lid closes, the waste settles)."""
RETRY_S = 10.0
"""A measurement whose readings disagreed is taken again after at most this long."""


@dataclass(frozen=True)
class FillSettings:
    empty_distance_m: float
    full_distance_m: float
    warn_percent: float = 75.0
    full_percent: float = 90.0
    hysteresis_percent: float = 10.0
    readings: int = 5
    agreement_m: float = 0.03
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.full_distance_m < self.empty_distance_m:
            raise ValueError(
                f"need 0 < full_distance_m ({self.full_distance_m}) < empty_distance_m "
                f"({self.empty_distance_m})"
            )
        if not 0 <= self.warn_percent <= self.full_percent <= 100:
            raise ValueError("need 0 <= warn_percent <= full_percent <= 100")
        if self.readings < 1 or self.agreement_m <= 0 or self.interval_s <= 0:
            raise ValueError("readings, agreement_m and interval_s must be positive")

    @classmethod
    def from_config(cls, fill) -> FillSettings:  # bin_daemon.config.FillConfig
        return cls(
            empty_distance_m=fill.empty_distance_m,
            full_distance_m=fill.full_distance_m,
            warn_percent=fill.warn_percent,
            full_percent=fill.full_percent,
            hysteresis_percent=fill.hysteresis_percent,
            readings=fill.readings,
            agreement_m=fill.agreement_m,
            interval_s=fill.interval_s,
        )

    def percent(self, distance_m: float) -> float:
        return fill_percent(distance_m, empty_m=self.empty_distance_m, full_m=self.full_distance_m)

    def distance_m(self, percent: float) -> float:
        """The distance a reading has at ``percent`` (the inverse of :meth:`percent`)."""
        span = self.empty_distance_m - self.full_distance_m
        return self.empty_distance_m - span * percent / 100


def fill_percent(distance_m: float, *, empty_m: float, full_m: float) -> float:
    """(empty - d) / (empty - full) as a percentage, clamped to 0..100."""
    percent = (empty_m - distance_m) / (empty_m - full_m) * 100
    return min(100.0, max(0.0, percent))


def agreed_median(distances: Sequence[float], agreement_m: float) -> float | None:
    """The median of ``distances`` if each is within ``agreement_m`` of the one before."""
    if not distances:
        return None
    if any(abs(b - a) > agreement_m for a, b in itertools.pairwise(distances)):
        return None
    return float(statistics.median(distances))


def next_state(state: FillState, percent: float, settings: FillSettings) -> FillState:
    """The state after a measurement of ``percent``, with hysteresis on the way down."""
    s = settings
    if percent >= s.full_percent or (
        state == "full" and percent >= s.full_percent - s.hysteresis_percent
    ):
        return "full"
    if percent >= s.warn_percent or (
        state in ("warn", "full") and percent >= s.warn_percent - s.hysteresis_percent
    ):
        return "warn"
    return "ok"


@dataclass
class _Bin:
    sensor: FillSensor
    settings: FillSettings
    percent: float | None = None
    state: FillState = "ok"
    due: float = float("-inf")
    readings: list[float] = field(default_factory=list)
    fault: str | None = None
    rejected: int = 0
    measured: int = 0


class FillMonitor:
    """Fill levels of the bins with a sensor; :meth:`levels` and :meth:`full_bins` may be read
    from any thread (the console, telemetry), :meth:`tick` runs in the sorting loop's."""

    def __init__(
        self,
        bins: Sequence[str],
        sensors: Mapping[str, FillSensor],
        settings: Mapping[str, FillSettings],
        *,
        clock: Clock,
        overflow: Mapping[str, str] | None = None,
        lid_closed: Callable[[str], bool] | None = None,
        on_change: Callable[[], None] | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        unknown = set(sensors) - set(bins)
        if unknown or set(sensors) != set(settings):
            raise ValueError("every fill sensor needs its settings, and a bin of that name")
        self.bins = list(bins)
        self.clock = clock
        self.overflow = dict(overflow or {})
        self.settle_s = settle_s
        self._lid_closed = lid_closed or (lambda _name: True)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._bins = {name: _Bin(sensors[name], settings[name]) for name in sensors}
        self._quiet_until = float("-inf")

    # -- read by anyone ---------------------------------------------------------------------

    def levels(self) -> dict[str, float | None]:
        """bin -> fill percent (0..100), None without a sensor or an accepted measurement."""
        with self._lock:
            return {
                name: (round(b.percent, 1) if (b := self._bins.get(name)) and b.percent is not None
                       else None)
                for name in self.bins
            }  # fmt: skip

    def full_bins(self) -> set[str]:
        with self._lock:
            return {name for name, b in self._bins.items() if b.state == "full"}

    def states(self) -> dict[str, FillState]:
        """ok / warn / full for each bin with a sensor."""
        with self._lock:
            return {name: b.state for name, b in self._bins.items()}

    def faults(self) -> dict[str, str]:
        """``fill <bin>`` -> what is wrong with its sensor (for STATUS=degraded)."""
        with self._lock:
            return {f"fill {name}": b.fault for name, b in self._bins.items() if b.fault}

    def status_text(self) -> str:
        """What STATUS= says about full bins, e.g. ``full: glass 93% (items go to landfill)``."""
        with self._lock:
            full = [
                f"{name} {b.percent:.0f}% "
                + (f"(items go to {self.overflow[name]})" if name in self.overflow
                   else "(no overflow)")
                for name, b in sorted(self._bins.items())
                if b.state == "full" and b.percent is not None
            ]  # fmt: skip
        return f"full: {', '.join(full)}" if full else ""

    # -- the sorting loop's side ------------------------------------------------------------

    def interrupt(self) -> None:
        """An item was just sorted: readings gathered so far are dropped; quiet for a while."""
        self._quiet_until = self.clock.monotonic() + self.settle_s
        for name, b in self._bins.items():
            b.readings.clear()
            self._rest(name, b)

    def tick(self) -> None:
        """Take at most one reading per due bin, never waiting. Call between items only."""
        now = self.clock.monotonic()
        if now < self._quiet_until:
            return
        for name, b in self._bins.items():
            if now < b.due:
                continue
            if not self._lid_closed(name):
                b.readings.clear()
                self._rest(name, b)
                continue
            try:
                sample = b.sensor.sample()
            except Exception as error:  # a fill sensor must never stop the sorting
                self._sensor_failed(name, b, _text(error), now)
                continue
            if sample is None:
                continue
            b.readings.append(sample.distance_m)
            if len(b.readings) >= b.settings.readings:
                self._finish(name, b, now)

    def measure_now(self, timeout_s: float | None = None) -> None:
        """Measure every bin at once, waiting for the readings (at start, before sorting)."""
        for name, b in self._bins.items():
            b.readings.clear()
            try:
                for _ in range(b.settings.readings):
                    b.readings.append(b.sensor.wait_sample(timeout_s).distance_m)
            except Exception as error:  # a fill sensor must never stop the sorting
                self._sensor_failed(name, b, _text(error), self.clock.monotonic())
                continue
            self._finish(name, b, self.clock.monotonic())

    def close(self) -> None:
        """Stop every sensor's pinging (the service closes the sensors with the hardware)."""
        for name, b in self._bins.items():
            self._rest(name, b)

    # -- inside -----------------------------------------------------------------------------

    def _rest(self, name: str, b: _Bin) -> None:
        try:
            b.sensor.rest()
        except Exception as error:  # a sensor that will not stop must not stop the bin
            log.warning("fill sensor '%s': cannot stop it: %s", name, error)

    def _finish(self, name: str, b: _Bin, now: float) -> None:
        readings, b.readings = b.readings, []
        self._rest(name, b)
        if b.fault is not None:
            log.warning("fill sensor '%s': readings are back", name)
            with self._lock:
                b.fault = None
            self._changed()
        distance = agreed_median(readings, b.settings.agreement_m)
        if distance is None:
            b.rejected += 1
            b.due = now + min(b.settings.interval_s, RETRY_S)
            shown = ", ".join(f"{d:.2f}" for d in readings)
            level = logging.WARNING if b.rejected == 3 else logging.DEBUG
            log.log(
                level,
                "fill sensor '%s': readings disagree by more than %.2f m (%s m)%s; measuring "
                "again later",
                name, b.settings.agreement_m, shown,
                " three times in a row (something moves in front of it?)" if b.rejected == 3
                else "",
            )  # fmt: skip
            return
        b.rejected = 0
        b.measured += 1
        b.due = now + b.settings.interval_s
        self._set_level(name, b, b.settings.percent(distance))

    def _set_level(self, name: str, b: _Bin, percent: float) -> None:
        with self._lock:
            before = b.state
            b.percent = percent
            b.state = next_state(before, percent, b.settings)
            after = b.state
        if after == before:
            return
        s = b.settings
        if after == "full" and name in self.overflow:
            log.warning(
                "bin '%s' is full (%.0f%%, full at %g%%): its items go to '%s' until it is "
                "emptied",
                name, percent, s.full_percent, self.overflow[name],
            )  # fmt: skip
        elif after == "full":
            log.warning(
                "bin '%s' is full (%.0f%%, full at %g%%) and has no overflow bin: its items "
                "still go to it; empty it",
                name, percent, s.full_percent,
            )  # fmt: skip
        elif after == "warn" and before == "ok":
            log.warning(
                "bin '%s' is %.0f%% full (warning at %g%%): empty it soon",
                name, percent, s.warn_percent,
            )  # fmt: skip
        elif after == "ok":
            again = ": items go to it again" if before == "full" else ""
            log.info("bin '%s' emptied (%.0f%%)%s", name, percent, again)
        else:  # full -> warn
            log.info("bin '%s' is no longer full (%.0f%%): items go to it again", name, percent)
        self._changed()

    def _sensor_failed(self, name: str, b: _Bin, text: str, now: float) -> None:
        b.readings.clear()
        self._rest(name, b)
        b.due = now + min(b.settings.interval_s, RETRY_S)
        text = text if text.startswith("fill") else f"fill sensor '{name}': {text}"
        with self._lock:
            if b.fault is not None:
                return  # the first text stays until readings come back: one line, one STATUS
            b.fault = text
        log.warning("%s; its level stays at the last measurement", text)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def describe_fill(sensor: FillSensor, fill) -> str:  # fill: bin_daemon.config.FillConfig
    """One reading for calibration, e.g. ``distance 0.412 m, 55% full (empty 0.80 m, ...)``."""
    settings = FillSettings.from_config(fill)
    distance = sensor.wait_sample().distance_m
    return (
        f"distance {distance:.3f} m, {settings.percent(distance):.0f}% full (empty "
        f"{settings.empty_distance_m:.2f} m, full {settings.full_distance_m:.2f} m)"
    )


def _text(error: Exception) -> str:
    return str(error) if isinstance(error, BinDaemonError) else f"{type(error).__name__}: {error}"


def build_fill_monitor(
    config,  # bin_daemon.config.Config
    sensors: Mapping[str, FillSensor],
    *,
    clock: Clock,
    lid_closed: Callable[[str], bool] | None = None,
    on_change: Callable[[], None] | None = None,
) -> FillMonitor:
    """The monitor for a config's bins and the fill sensors built for it."""
    settings = {
        name: FillSettings.from_config(b.fill)
        for name, b in config.bins.items()
        if b.fill is not None and name in sensors
    }
    return FillMonitor(
        list(config.bins),
        {name: sensors[name] for name in settings},
        settings,
        clock=clock,
        overflow=config.overflow_for(),
        lid_closed=lid_closed,
        on_change=on_change,
    )
