"""The sorting state machine: sensor -> camera -> classifier -> policy -> lid.

    WAIT_CLEAR --sensor inactive--> ARMED --active for debounce_s--> (one item:)
      capture -> classify -> decide -> open -> hold -> close -> detach -> cool-down
    --> ARMED if the sensor is inactive, else WAIT_CLEAR

Everything is synchronous and driven by :meth:`Sorter.poll`, so a sensor that fires while an
item is being handled is simply not looked at (re-triggers are ignored), and a sensor stuck
active re-arms only once it has gone inactive (the lid cannot flap). Lids are driven closed
at start, after every item and at every exit path. Time comes from an injected clock.

Faults are kept in :attr:`Sorter.faults` (``{"camera": "...", "sensor": "..."}``; the service
reports them as ``STATUS=degraded: ...``) and clear themselves when the device recovers:

* camera: a capture error, timeout, stale or black frame is retried with backoff
  (``CameraRetry``); if every try fails the item goes to the fallback bin.
* sensor: a read that fails counts as "no item"; active for ``stuck_after_s`` while waiting
  for it to clear is a "stuck" fault (no lid moves) until it goes inactive.
"""

from __future__ import annotations

import enum
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from bin_daemon.errors import BinDaemonError, HardwareError
from bin_daemon.hardware.ports import Camera, Clock, Frame, Lid, ProximitySensor
from bin_daemon.loop.policy import BinChoice
from bin_daemon.records.events import SortEvent, iso_utc

log = logging.getLogger(__name__)


HEARTBEAT_EVERY_S = 1.0
"""Long waits (a lid's hold) are cut into slices this long so the watchdog keeps being fed."""


class State(enum.Enum):
    WAIT_CLEAR = "waiting for the sensor to clear"
    ARMED = "armed"
    BUSY = "sorting an item"
    STOPPED = "stopped"


class ItemClassifier(Protocol):
    sha256: str

    def classify(self, rgb: np.ndarray): ...  # -> classifier.Prediction


@dataclass(frozen=True)
class Timing:
    hold_open_s: float
    lid_move_s: float
    cooldown_s: float
    debounce_s: float
    stuck_after_s: float = math.inf
    """Sensor active this long while waiting for it to clear: a sensor fault."""

    def __post_init__(self) -> None:
        for name in ("hold_open_s", "lid_move_s", "cooldown_s", "debounce_s", "stuck_after_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be zero or more seconds, got {value!r}")


@dataclass(frozen=True)
class CameraRetry:
    """Tries per item and the wait between them (doubled each time); black frame level."""

    attempts: int = 1
    backoff_s: float = 0.0
    black_level: float = 0.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not self.backoff_s >= 0 or not self.black_level >= 0:
            raise ValueError("backoff_s and black_level must be zero or more")


@dataclass
class Counts:
    items: int = 0
    unsure: int = 0
    errors: int = 0
    per_bin: Counter[str] | None = None

    def status(self, state: State, faults: Mapping[str, str] | None = None) -> str:
        bins = ", ".join(f"{k} {v}" for k, v in sorted((self.per_bin or {}).items()))
        text = f"{self.items} items ({self.unsure} unsure, {self.errors} errors)"
        text = f"{text}; {bins}; {state.value}" if bins else f"{text}; {state.value}"
        if faults:
            text = f"degraded: {'; '.join(faults.values())}; {text}"
        return text


class Sorter:
    def __init__(
        self,
        *,
        sensor: ProximitySensor,
        camera: Camera,
        classifier: ItemClassifier,
        decide: Callable[[str | None, float], BinChoice],
        lids: Mapping[str, Lid],
        timing: Timing,
        clock: Clock,
        stop: threading.Event | None = None,
        on_event: Callable[[SortEvent, Frame | None], None] | None = None,
        on_decision: Callable[[SortEvent], None] | None = None,
        on_faults: Callable[[], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        stopwatch: Callable[[], float] = time.perf_counter,
        camera_retry: CameraRetry | None = None,
        run_id: str | None = None,
    ) -> None:
        if not lids:
            raise ValueError("a sorter needs at least one lid")
        self.sensor = sensor
        self.camera = camera
        self.classifier = classifier
        self.decide = decide
        self.lids = dict(lids)
        self.timing = timing
        self.clock = clock
        self.stop = stop or threading.Event()
        self.on_event = on_event
        self.on_decision = on_decision
        self.on_faults = on_faults
        self.heartbeat = heartbeat
        self._stopwatch = stopwatch
        self.camera_retry = camera_retry or CameraRetry()
        self.run_id = run_id or secrets.token_hex(3)
        """Part of every item id, so ids stay unique across restarts (even if the clock repeats)."""
        self.state = State.WAIT_CLEAR
        self.counts = Counts(per_bin=Counter())
        self.faults: dict[str, str] = {}
        self._active_since: float | None = None
        self._clear_wait_since: float | None = None
        self._camera_failed_items = 0
        self._seq = 0
        self._lid_commanded_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Drive every lid closed (then detach) and wait for a clear sensor."""
        self.close_all_lids()
        self._active_since = None
        if self._read_sensor():
            self._enter_wait_clear()
            log.warning("sensor is active at start: waiting for it to clear before sorting")
        else:
            self.state = State.ARMED

    def close_all_lids(self) -> None:
        """Close every lid, wait for the servos, detach them. Never raises for one bad lid."""
        failures = []
        for lid in self.lids.values():
            try:
                lid.close()
            except Exception as error:
                failures.append(f"{lid.name}: {error}")
        self._wait(self.timing.lid_move_s, interruptible=False)
        for lid in self.lids.values():
            try:
                lid.detach()
            except Exception as error:
                failures.append(f"{lid.name}: {error}")
        if failures:
            log.error("could not close every lid: %s", "; ".join(failures))

    def shutdown(self) -> None:
        self.close_all_lids()
        self.state = State.STOPPED

    # -- the loop --------------------------------------------------------------------------

    def poll(self) -> SortEvent | None:
        """Read the sensor once; sort an item if one has arrived. The item's event, or None."""
        active = self._read_sensor()
        now = self.clock.monotonic()
        if self.state is State.WAIT_CLEAR:
            if not active:
                self.state = State.ARMED
                self._active_since = None
                if self.faults.get("sensor", "").startswith("sensor: stuck"):
                    log.warning("sensor: clear again; sorting resumes")
                    self._clear_fault("sensor")
            elif (
                self._clear_wait_since is not None
                and now - self._clear_wait_since >= self.timing.stuck_after_s
                and "sensor" not in self.faults
            ):
                self._set_fault(
                    "sensor",
                    f"sensor: stuck active for {now - self._clear_wait_since:.0f} s "
                    "(something on the flap, or a faulty sensor); no lid moves until it clears",
                )
            return None
        if self.state is not State.ARMED:
            return None
        if not active:
            self._active_since = None
            return None
        if self._active_since is None:
            self._active_since = now
        if now - self._active_since < self.timing.debounce_s:
            return None
        self._active_since = None
        return self.sort_item(trigger=now)

    def _read_sensor(self) -> bool:
        """The raw sensor reading; a failing read is a sensor fault and counts as 'no item'."""
        try:
            active = bool(self.sensor.is_active)
        except Exception as error:
            known = isinstance(error, BinDaemonError)
            text = str(error) if known else f"{type(error).__name__}: {error}"
            if not text.startswith("sensor") and not text.startswith("HC-SR04"):
                text = f"sensor: {text}"
            self._set_fault("sensor", f"{text} (read failed; treated as no item)")
            return False
        if self.faults.get("sensor", "").endswith("(read failed; treated as no item)"):
            log.warning("sensor: readings are back")
            self._clear_fault("sensor")
        return active

    def _enter_wait_clear(self) -> None:
        self.state = State.WAIT_CLEAR
        self._clear_wait_since = self.clock.monotonic()

    def _set_fault(self, device: str, text: str) -> None:
        if self.faults.get(device) == text:
            return
        self.faults[device] = text
        log.error("%s", text)
        if self.on_faults is not None:
            self.on_faults()

    def _clear_fault(self, device: str) -> None:
        if self.faults.pop(device, None) is not None and self.on_faults is not None:
            self.on_faults()

    def sort_item(self, *, trigger: float) -> SortEvent:
        """Handle one item whose sensor trigger was at ``trigger`` (monotonic seconds)."""
        self.state = State.BUSY
        self._seq += 1
        wall = self.clock.time()
        triggered = self._stopwatch()
        self._lid_commanded_at = None
        event, frame = self._classify(trigger=trigger, wall=wall)
        if self.on_decision is not None:
            self.on_decision(event)  # recorded before the lid moves: never lost
        try:
            event.lid = self._cycle_lid(event.bin)
        except Exception as error:  # a servo that fails must not stop the bin
            event.lid = "failed"
            event.error = f"lid '{event.bin}': {error}"
            log.error("lid '%s' failed: %s", event.bin, error)
        if self._lid_commanded_at is not None:  # servo travel and the hold excluded
            event.latency_ms["trigger_to_lid"] = round(
                (self._lid_commanded_at - triggered) * 1000, 2
            )
        self._count(event)
        if self.on_event is not None:
            self.on_event(event, frame)
        if event.lid == "completed" and not self.stop.is_set():
            self._wait(self.timing.cooldown_s, interruptible=True)
        still_there = self._read_sensor()
        if still_there:
            log.info("sensor still active after the item: re-arming once it clears")
            self._enter_wait_clear()
        else:
            self.state = State.ARMED
        return event

    def _classify(self, *, trigger: float, wall: float) -> tuple[SortEvent, Frame | None]:
        start = self._stopwatch()
        frame: Frame | None = None
        label: str | None = None
        confidence = 0.0
        top: list[dict[str, object]] = []
        error: str | None = None
        site = False  # the site head changed the model's label
        model_label: str | None = None
        capture_ms = classify_ms = preprocess_ms = 0.0
        try:
            frame = self._capture(trigger)
            captured = self._stopwatch()
            capture_ms = (captured - start) * 1000
            prediction = self.classifier.classify(frame.rgb)
            classify_ms = (self._stopwatch() - captured) * 1000
            preprocess_ms = getattr(prediction, "preprocess_ms", 0.0)
            label, confidence = prediction.label, prediction.confidence
            top = [{"label": name, "score": round(score, 4)} for name, score in prediction.top]
            site = bool(getattr(prediction, "site", False))
            model_label = getattr(prediction, "model_label", None)
        except Exception as failure:  # the item is on the flap: it must go somewhere
            known = isinstance(failure, BinDaemonError)
            error = str(failure) if known else f"{type(failure).__name__}: {failure}"
            log.error(
                "item %d: %s; sending it to the fallback bin", self._seq, error, exc_info=not known
            )
        decide_started = self._stopwatch()
        choice = self.decide(label, confidence)
        decided = self._stopwatch()
        total_ms = (decided - start) * 1000
        event = SortEvent(
            item_id=_item_id(wall, self.run_id, self._seq),
            ts=iso_utc(wall),
            label=label,
            confidence=None if label is None else round(confidence, 4),
            top=top,
            bin=choice.bin,
            unsure=choice.unsure,
            model=self.classifier.sha256,
            frame_source=frame.source if frame is not None else None,
            latency_ms={
                "capture": round(capture_ms, 2),
                "classify": round(classify_ms, 2),
                "preprocess": round(preprocess_ms, 2),
                "decide": round((decided - decide_started) * 1000, 3),
                "total": round(total_ms, 2),
            },
            seq=self._seq,
            reason=choice.reason,
            error=error,
            site=site,
            extra={"model_label": model_label} if site else {},
        )
        return event, frame

    def _capture(self, trigger: float) -> Frame:
        """A good frame for this item, retried with backoff; HardwareError if none came."""
        retry = self.camera_retry
        delay = retry.backoff_s
        failure: BinDaemonError = HardwareError("camera: no attempt made")
        for attempt in range(1, retry.attempts + 1):
            try:
                frame = self.camera.capture(not_before=trigger)
                problem = _frame_problem(frame, trigger, retry.black_level)
                if problem is None:
                    self._camera_ok()
                    return frame
                failure = HardwareError(f"camera: {problem}")
            except BinDaemonError as error:
                failure = error
            except Exception as error:  # a driver raising anything: still a camera fault
                failure = HardwareError(f"camera: {type(error).__name__}: {error}")
            if attempt == retry.attempts or self.stop.is_set():
                break
            log.warning(
                "item %d: %s; retrying in %.2f s (try %d of %d)",
                self._seq, failure, delay, attempt + 1, retry.attempts,
            )  # fmt: skip
            if self._wait(delay, interruptible=True):
                break  # stopping: no more tries
            delay *= 2
        self._camera_failed_items += 1
        text = str(failure)
        self._set_fault("camera", text if text.startswith("camera") else f"camera: {text}")
        recover = getattr(self.camera, "recover", None)
        if callable(recover):
            try:
                recover()
            except Exception as error:
                log.warning("camera: restart failed: %s", error)
        raise failure

    def _camera_ok(self) -> None:
        if "camera" in self.faults:
            log.warning(
                "camera: working again (%d item(s) went to the fallback bin meanwhile)",
                self._camera_failed_items,
            )
            self._clear_fault("camera")
        self._camera_failed_items = 0

    def _cycle_lid(self, name: str) -> str:
        """Open, hold, close, detach. SIGTERM (``stop``) cuts the hold short, never the close."""
        if self.stop.is_set():
            return "not opened (stopping)"
        lid = self.lids[name]
        interrupted = False
        try:
            lid.open()
            self._lid_commanded_at = self._stopwatch()
            log.debug(
                "item %d: lid %s open, holding %.2f s", self._seq, name, self.timing.hold_open_s
            )
            interrupted = self._wait(self.timing.hold_open_s, interruptible=True)
        finally:
            lid.close()
            self._wait(self.timing.lid_move_s, interruptible=False)
            lid.detach()
        return "hold cut short (stopping)" if interrupted else "completed"

    def _wait(self, seconds: float, *, interruptible: bool) -> bool:
        """Wait on the clock in slices, calling ``heartbeat`` (the watchdog) between them.

        Returns True if ``stop`` cut an interruptible wait short.
        """
        remaining = seconds
        while True:
            if self.heartbeat is not None:
                self.heartbeat()
            step = min(remaining, HEARTBEAT_EVERY_S)
            interrupt = self.stop if interruptible else None
            if self.clock.sleep(step, interrupt=interrupt):
                return True
            remaining -= step
            if remaining <= 0:
                return False

    def _count(self, event: SortEvent) -> None:
        self.counts.items += 1
        self.counts.unsure += int(event.unsure)
        self.counts.errors += int(event.error is not None)
        assert self.counts.per_bin is not None
        self.counts.per_bin[event.bin] += 1


def _frame_problem(frame: Frame, trigger: float, black_level: float) -> str | None:
    """Why a frame cannot be used (bad array, stale, black), or None."""
    rgb = frame.rgb
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
        or rgb.size == 0
    ):
        what = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        return f"bad frame ({what}, expected RGB uint8 (H, W, 3))"
    if frame.timestamp < trigger:
        return f"stale frame (exposed {trigger - frame.timestamp:.2f} s before the item arrived)"
    if black_level > 0:
        mean = float(rgb[::8, ::8].mean())
        if mean < black_level:
            return f"black frame (mean brightness {mean:.1f} < {black_level:g}; lens covered?)"
    return None


def _item_id(wall: float, run_id: str, seq: int) -> str:
    """``<UTC time to the ms>Z-<run id>-<seq>``: sorts by time, unique across restarts."""
    stamp = datetime.fromtimestamp(wall, UTC)
    return f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z-{run_id}-{seq:04d}"
