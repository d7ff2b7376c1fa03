"""``bin-daemon run``: wiring and lifecycle.

Start in order (config, logging, model, event log, hardware, lids closed), then READY=1;
stop in reverse (lids closed and detached, devices released, STOPPING=1). SIGTERM/SIGINT end
the run after the current item (a lid's hold is cut short, its close never is), exit status
0. SIGHUP reloads the config and the model between items; if the new ones are bad the old
ones stay.

Site learning: the classifier that sorts is the site link's (``site_link.py``): the model
with the site store's head, refitted between items when the store changes, and taught the
frames corrected on the web console.

Health: WATCHDOG=1 is sent only from the loop's own thread, when it makes progress (a poll,
a slice of a wait), so a hung camera or classifier silences it and systemd restarts the
service. A lid guard (``lidguard.py``) closes any lid open longer than
``timing.max_open_s``, from the loop and from its own timer thread. Device faults are
reported as ``STATUS=degraded: ...`` and clear when the device recovers.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from bin_daemon.config import Config, load_config
from bin_daemon.errors import BinDaemonError, ModelError
from bin_daemon.hardware import HardwareKind, build_hardware
from bin_daemon.hardware.clock import SystemClock
from bin_daemon.hardware.fakes import FakeClock
from bin_daemon.hardware.ports import Clock, Frame
from bin_daemon.loop.lidguard import LidGuard
from bin_daemon.loop.overflow import route_around_full
from bin_daemon.loop.policy import Policy
from bin_daemon.loop.site_link import SiteLink
from bin_daemon.loop.sorter import CameraRetry, Sorter, Timing
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.store import ModelStore
from bin_daemon.paths import shipped_models_dir
from bin_daemon.records import journal
from bin_daemon.records.eventlog import EventLog
from bin_daemon.records.events import JsonLinesSink, SortEvent
from bin_daemon.records.spool import Spool

log = logging.getLogger("bin_daemon")

WATCHDOG_EVERY_S = 1.0
"""At most this long between WATCHDOG=1 pings while the loop is healthy (or half WatchdogSec)."""
LID_GUARD_EVERY_S = 0.5
"""The lid guard's timer: how often it checks, whatever the loop is doing."""


@dataclass(frozen=True)
class RunOptions:
    config_path: Path | None = None
    hardware: HardwareKind = "pi"
    images: Path | None = None
    max_items: int | None = None
    events_path: Path | None = None
    realtime: bool = False
    fill_levels: Path | None = None
    """Fake hardware: a JSON file of bin -> fill percent, re-read when it changes."""


def load_classifier(config: Config, *, reference_kernels: bool = False) -> Classifier:
    model_dir = config.model_dir() or shipped_models_dir()
    classifier = Classifier.load(
        model_dir,
        num_threads=config.model.num_threads,
        on_sha256_mismatch=config.model.on_sha256_mismatch,
        reference_kernels=reference_kernels,
    )
    return with_model_options(classifier, config)


def with_model_options(classifier: Classifier, config: Config) -> Classifier:
    """``classifier`` with the config's test-time augmentation and prior shift."""
    classifier.tta = config.model.tta
    bias = {label: value for label, value in config.model.class_bias.items() if value}
    classifier.class_bias = MappingProxyType(bias)
    return classifier


def model_options_text(classifier: Any) -> str:
    """ ", tta flip, class bias trash +1" for the options not at their default; else ""."""
    tta, bias = getattr(classifier, "tta", "none"), getattr(classifier, "class_bias", None)
    text = "" if tta == "none" else f", tta {tta}"
    if bias:
        text += ", class bias " + ", ".join(f"{k} {v:+g}" for k, v in bias.items())
    return text


def unsure_threshold(config: Config, classifier: Any) -> float | None:
    """The unsure threshold in force: the config's, else the site head's when it recalibrated
    one (a ``SiteClassifier``), else the model card's; None if none of them gives one."""
    for threshold in (
        config.model.unsure_threshold,
        getattr(classifier, "unsure_threshold", None),
        classifier.card_unsure_threshold,
    ):
        if threshold is not None:
            return threshold
    return None


def make_policy(config: Config, classifier: Any) -> Policy:
    threshold = unsure_threshold(config, classifier)
    if threshold is None:
        raise ModelError(
            f"{classifier.model_path.parent}: the model card has no unsure_threshold; "
            "set model.unsure_threshold in the config"
        )
    return Policy(config.bin_for_label(), config.fallback_bin, threshold)


def make_timing(config: Config) -> Timing:
    return Timing(
        hold_open_s=config.timing.hold_open_s,
        lid_move_s=config.timing.lid_move_s,
        cooldown_s=config.timing.cooldown_s,
        debounce_s=config.sensor.debounce_s,
        stuck_after_s=config.sensor.stuck_after_s,
    )


def make_camera_retry(config: Config) -> CameraRetry:
    return CameraRetry(
        attempts=config.camera.capture_attempts,
        backoff_s=config.camera.retry_backoff_s,
        black_level=config.camera.black_frame_level,
    )


def open_event_log(config: Config) -> EventLog | None:
    """The event log, or None (logged) if it cannot be opened: sorting goes on without it."""
    try:
        return EventLog(config.event_log_path(), keep_days=config.event_log.keep_days)
    except BinDaemonError as error:
        log.error("%s; decisions go only to the journal", error)
        return None


def make_spool(config: Config) -> Spool:
    return Spool(
        config.spool_dir(),
        save=config.spool.save,
        quota_mb=config.spool.quota_mb,
        jpeg_quality=config.spool.jpeg_quality,
    )


def rollout_store(
    config: Config, factory: Callable[[Path], ModelStore] = ModelStore
) -> tuple[ModelStore | None, str | None]:
    """The model store roll-outs install into: the one whose ``current`` link model.dir is
    (the installed layout). Else (None, why roll-outs cannot be switched to)."""
    model_dir = config.model_dir()
    if model_dir is not None and model_dir.name == "current" and model_dir.is_symlink():
        return factory(model_dir.parent), None
    return None, (
        f"model.dir ({model_dir or 'the shipped model'}) is not a model store's 'current' "
        "link, so the daemon could not switch to a rolled-out model; point model.dir at "
        "/var/lib/bin-daemon/models/current (deploy/install.sh does)"
    )


def _hardware_settings(config: Config) -> Any:
    return (
        config.sensor,
        config.camera,
        {name: b.model_dump(exclude={"labels"}) for name, b in config.bins.items()},
    )


class Service:
    def __init__(
        self,
        options: RunOptions,
        *,
        clock: Clock | None = None,
        notifier: journal.Notifier | None = None,
        stdout: TextIO | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        classifier_factory: Callable[[Config], Any] | None = None,
        store_factory: Callable[[Path], ModelStore] = ModelStore,
        console_hooks: Any = None,
    ) -> None:
        self.options = options
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = notifier or journal.Notifier()
        self.stdout = stdout if stdout is not None else sys.stdout
        simulated = options.hardware == "fake" and not options.realtime
        self.clock: Clock = clock or (
            FakeClock(start_time_s=time.time()) if simulated else SystemClock()
        )
        self.sorter: Sorter | None = None
        self.lid_guard: LidGuard | None = None
        self.event_log: EventLog | None = None
        self.faults: dict[str, str] = {}
        """Service-level faults (the event log); the sorter keeps the devices' own."""
        self._monotonic = monotonic
        self._load_classifier = classifier_factory or load_classifier
        self._last_watchdog = float("-inf")
        self._journal = False
        self.telemetry: Any = None
        """bin_daemon.telemetry.runtime.Telemetry when the config has a telemetry output."""
        self._rollout: Any = None
        self._model_store: ModelStore | None = None
        self._store_factory = store_factory
        self._swaps: queue.SimpleQueue[Any] = queue.SimpleQueue()
        """Roll-outs installed in the store, to switch to between items."""
        self._running_sha = ""
        self.last_reload_error: str | None = None
        self.fill: Any = None
        """bin_daemon.hardware.fill.FillMonitor when a bin has a fill sensor (issue 16)."""
        self.site_link = SiteLink(monotonic=monotonic, on_progress=self._heartbeat)
        self._policy: Policy | None = None
        # the web console (bin_daemon/console/): hooks = console.state.Hooks (on_correction,
        # extra_labels, fill_levels); None = none of them
        self.console_hooks: Any = console_hooks
        self.console: Any = None
        self._started_wall = time.time()
        self._started_mono = time.monotonic()

    @property
    def site(self) -> Any:
        """bin_daemon.site.runtime.SiteClassifier: the model with the site head applied."""
        return self.site_link.site

    # -- signals ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT -> stop, SIGHUP -> reload. Returns a function restoring the old ones."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: lambda *_: self.reload_requested.set(),
        }
        old = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def _on_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            log.info("%s: stopping after the current item", signal.Signals(signum).name)
        self.stop.set()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        config = load_config(options.config_path)
        self._journal = journal.use_journal(config.logging.journal)
        journal.setup_logging(config.logging.level, journal=self._journal)
        classifier = self._load_classifier(config)
        self.site_link.replace(self.site_link.open(config, classifier))
        for warning in config.check_labels(classifier.labels, self.site_link.labels()):
            log.warning("%s", warning)
        policy = make_policy(config, self.site)
        self._policy = policy
        log.info(
            "model %s %s (sha256 %s, %s%s), unsure below %.2f",
            classifier.model_path.name,
            classifier.version,
            classifier.sha256[:12],
            classifier.runtime,
            model_options_text(classifier),
            policy.unsure_threshold,
        )
        sinks: list[Callable[[SortEvent], None]] = [
            journal.ItemReporter(journal=self._journal, stream=self.stdout)
        ]
        self.event_log = open_event_log(config)
        if self.event_log is None:
            self.faults["event_log"] = "event log: cannot be opened"
        else:
            sinks.insert(0, self.event_log.record)  # durable first
        events_file = JsonLinesSink(options.events_path) if options.events_path else None
        if events_file is not None:
            sinks.append(events_file)
        self._running_sha = classifier.sha256
        spool = make_spool(config)
        self._spool = spool
        hardware = build_hardware(
            config,
            options.hardware,
            clock=self.clock,
            images=options.images,
            max_items=options.max_items,
            fill=True,
            fill_levels=options.fill_levels,
        )
        self.lid_guard = LidGuard(clock=self.clock, max_open_s=config.timing.max_open_s)
        lids = self.lid_guard.wrap(hardware.lids)
        try:
            assert hardware.camera is not None
            self._start_fill(config, hardware.fill, lids)

            def on_decision(event: SortEvent) -> None:
                if self.event_log is None:
                    return
                try:
                    self.event_log.record_decision(event)
                except (OSError, BinDaemonError) as error:  # a full disk must not stop the bin
                    log.error("could not record item %s: %s", event.item_id, error)

            def on_event(event: SortEvent, frame: Frame | None) -> None:
                for sink in sinks:
                    try:
                        sink(event)
                    except (OSError, BinDaemonError) as error:  # nor a failing sink
                        log.error("could not record item %s: %s", event.item_id, error)
                self._spool.maybe_save(event, frame.rgb if frame is not None else None)
                self.notifier.status(self._status())

            self.sorter = Sorter(
                sensor=hardware.sensor,
                camera=hardware.camera,
                classifier=self.site,
                decide=self._decide,
                lids=lids,
                timing=make_timing(config),
                clock=self.clock,
                stop=self.stop,
                on_event=on_event,
                on_decision=on_decision,
                on_faults=lambda: self.notifier.status(self._status()),
                heartbeat=self._heartbeat,
                camera_retry=make_camera_retry(config),
            )
            self._start_telemetry(config)
            if self.telemetry is not None:
                sinks.append(self.telemetry.record)  # after the event log: it reads its rows
            self.lid_guard.start(LID_GUARD_EVERY_S)
            self.sorter.start()
            if self.fill is not None:
                self.fill.measure_now()  # the levels before the first item (lids closed)
            self._config = config
            where = f"{options.hardware} hardware"
            if options.hardware == "fake":
                where += ", realtime" if options.realtime else ", simulated time"
            log.info(
                "ready (%s; bins %s; spool %s: %s; event log %s)",
                where,
                ", ".join(config.bins),
                config.spool.save,
                spool.directory if spool.enabled else "off",
                self.event_log.path if self.event_log is not None else "off",
            )
            self.notifier.ready(self._status())
            self._start_console(config)
            self._last_watchdog = float("-inf")  # the loop's first iteration pings at once
            self._loop(config.timing.poll_interval_s)
        finally:
            self.notifier.stopping(self._status() if self.sorter else "stopping")
            try:
                if self.sorter is not None:
                    self.sorter.shutdown()
            finally:
                self._stop_console()  # after the lids are closed: they come first
                self.lid_guard.stop()
                hardware.close()
                if events_file is not None:
                    events_file.close()
                self._stop_telemetry()
                if self.event_log is not None:
                    self.event_log.close()
                self.site_link.close()
            log.info("stopped: all lids closed")
            if self.sorter is not None and not self._journal:
                print(self._summary(), file=self.stdout, flush=True)
        return 0

    def _loop(self, poll_interval_s: float) -> None:
        assert self.sorter is not None
        max_items = self.options.max_items
        while not self.stop.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
                poll_interval_s = self._config.timing.poll_interval_s
            if not self._swaps.empty():
                self._apply_rollout(*self._swaps.get_nowait())
                poll_interval_s = self._config.timing.poll_interval_s
            self._heartbeat()
            self.site_link.teach_corrections()
            self._refresh_site()
            event = self.sorter.poll()
            if self.fill is not None:  # fill levels: between items only, never waiting
                if event is not None:
                    self.fill.interrupt()
                else:
                    self.fill.tick()
            if max_items is not None and self.sorter.counts.items >= max_items:
                log.info("sorted %d items (--max-items)", self.sorter.counts.items)
                break
            if event is None:
                self.clock.sleep(poll_interval_s, interrupt=self.stop)

    def _heartbeat(self) -> None:
        """The loop made progress: enforce the lids' hard cap, feed the watchdog."""
        if self.lid_guard is not None:
            self.lid_guard.check()
        self._watchdog()

    def _watchdog(self) -> None:
        """Send WATCHDOG=1 if due. Called only from the loop's thread, only on progress."""
        now = self._monotonic()
        every = min(WATCHDOG_EVERY_S, journal.watchdog_interval_s() or WATCHDOG_EVERY_S)
        if now - self._last_watchdog >= every:
            self._last_watchdog = now
            self.notifier.watchdog()

    def reload(self) -> bool:
        """Re-read the config and the model between items; keep the old ones if either is
        bad (False, the reason in ``last_reload_error``)."""
        assert self.sorter is not None
        self.notifier.reloading()
        try:
            config = load_config(self.options.config_path)
            classifier = self._load_classifier(config)
            site = self.site_link.open(config, classifier)
            try:
                for warning in config.check_labels(classifier.labels, self.site_link.labels(site)):
                    log.warning("%s", warning)
                policy = make_policy(config, site)
            except BinDaemonError:
                self.site_link.discard(site)
                raise
        except BinDaemonError as error:
            log.error("reload failed, keeping the running config and model: %s", error)
            self.last_reload_error = str(error)
            self.notifier.ready(self._status())
            return False
        self.last_reload_error = None
        self._running_sha = classifier.sha256
        if _hardware_settings(config) != _hardware_settings(self._config):
            log.warning("sensor, camera or servo settings changed: restart the service to apply")
        if config.telemetry != self._config.telemetry:
            log.warning("telemetry settings changed: restart the service to apply them")
        if config.console != self._config.console:
            log.warning("console settings changed: restart the service to apply them")
        journal.setup_logging(config.logging.level, journal=self._journal)
        self.site_link.replace(site)
        self._policy = policy
        self.sorter.classifier = site
        self.sorter.decide = self._decide
        self.sorter.timing = make_timing(config)
        self.sorter.camera_retry = make_camera_retry(config)
        if self.lid_guard is not None:
            self.lid_guard.max_open_s = config.timing.max_open_s
        self._spool = make_spool(config)
        self._config = config
        log.info("reloaded: model %s (sha256 %s)", classifier.version, classifier.sha256[:12])
        self.notifier.ready(self._status())
        return True

    # -- fill levels (issue 16; bin_daemon/hardware/fill.py) -------------------------------

    def _start_fill(self, config: Config, sensors: dict[str, Any], lids: dict[str, Any]) -> None:
        if not sensors:
            return
        from bin_daemon.hardware.fill import build_fill_monitor

        self.fill = build_fill_monitor(
            config,
            sensors,
            clock=self.clock,
            lid_closed=lambda name: not lids[name].is_open,
            on_change=lambda: self.notifier.status(self._status()),
        )

    # -- the decision ---------------------------------------------------------------------

    def _refresh_site(self) -> None:
        """Between items: the site link refits its head when the store changed; the policy
        then takes the head's threshold, if it has one (``unsure_threshold``)."""
        if self.site_link.refresh():
            self._policy = make_policy(self._config, self.site)

    def _decide(self, label: str | None, confidence: float) -> Any:
        """The policy (its threshold from ``unsure_threshold``), with full bins routed to
        their overflow when fill sensors are there."""
        assert self._policy is not None
        policy = self._policy
        if self.fill is None:
            return policy.decide(label, confidence)
        # full bins routed to their overflow (fill settings apply at a restart)
        return route_around_full(
            policy.decide(label, confidence),
            full=self.fill.full_bins(),
            overflow=self.fill.overflow,
            fallback_bin=policy.fallback_bin,
        )

    # -- telemetry and roll-outs (bin_daemon/telemetry/) -----------------------------------

    def _start_telemetry(self, config: Config) -> None:
        """MQTT and/or the Prometheus textfile, when configured. Never stops the sorting:
        a broker that is down is retried in the background."""
        settings = config.telemetry
        if settings.mqtt is None and settings.prometheus.textfile_path is None:
            return
        from bin_daemon.telemetry.rollout_worker import NO_KEYS, RolloutWorker
        from bin_daemon.telemetry.runtime import Telemetry
        from bin_daemon.telemetry.topics import Topics

        rollout = None
        if settings.mqtt is not None and settings.mqtt.rollout:
            self._model_store, problem = rollout_store(config, self._store_factory)
            if problem is not None:
                log.warning("model roll-outs over MQTT will be refused: %s", problem)
            elif not config.model.trusted_keys:  # model signatures
                log.warning("model roll-outs over MQTT will be refused: %s", NO_KEYS)
            rollout = RolloutWorker(
                own_topic=Topics(settings.mqtt.bin_id).model,
                store=self._model_store,
                store_problem=problem,
                active_sha=lambda: self._running_sha,
                request_swap=lambda request, note: self._swaps.put((request, note)),
                report=lambda report: self.telemetry.report_model(report),
                max_bytes=int(settings.mqtt.max_model_mb * 1024 * 1024),
                # model signatures: the keys of the config running now (a reload may change them)
                trusted_keys=lambda: getattr(self, "_config", config).model.trusted_keys,
            )
        self.telemetry = Telemetry(
            settings,
            clock=self.clock,
            event_log_path=self.event_log.path if self.event_log is not None else None,
            model_sha=lambda: self._running_sha,
            prometheus_path=config.prometheus_path(),
            on_model_message=rollout.offer if rollout is not None else None,
            fill=self.fill,
        )
        if rollout is not None:
            rollout.start()
            self._rollout = rollout
        self.telemetry.start()

    def _stop_telemetry(self) -> None:
        if self._rollout is not None:
            self._rollout.stop()
        if self.telemetry is not None:
            self.telemetry.stop()

    def _apply_rollout(self, request: Any, note: str) -> None:
        """Switch to a roll-out the store has installed (between items, like SIGHUP); if the
        daemon cannot run it, roll the store back and say so."""
        from bin_daemon.telemetry.rollout_worker import outcome

        assert self.telemetry is not None
        if self.reload() and self._running_sha == request.sha256:
            log.info("roll-out %s applied", request.sha256[:12])
            self.telemetry.report_model(outcome("applied", f"{note}; running", request))
            return
        reason = self.last_reload_error or (
            f"after the switch the daemon runs {self._running_sha[:12]}..., not this model"
        )
        try:
            assert self._model_store is not None
            self._model_store.rollback()
            self.reload()
        except BinDaemonError as error:
            reason += f"; rollback failed: {error}"
        log.error("roll-out %s rolled back: %s", request.sha256[:12], reason)
        self.telemetry.report_model(outcome("rolled_back", reason, request))

    def _faults(self) -> dict[str, str]:
        assert self.sorter is not None
        faults = {**self.sorter.faults.copy(), **self.faults.copy()}
        telemetry_fault = self.telemetry.fault() if self.telemetry is not None else None
        if telemetry_fault:
            faults["telemetry"] = telemetry_fault
        if self.fill is not None:
            faults.update(self.fill.faults())
        return faults

    def _status(self) -> str:
        if self.sorter is None:
            return "starting"
        text = self.sorter.counts.status(self.sorter.state, self._faults())
        full = self.fill.status_text() if self.fill is not None else ""
        return f"{full}; {text}" if full else text

    # -- the web console (bin_daemon/console/) ---------------------------------------------

    def _start_console(self, config: Config) -> None:
        """The console, when ``console.listen`` is set; it never stops the sorting."""
        if config.console.listen is None:
            return
        from bin_daemon.console.runner import ConsoleRunner

        hooks = self.console_hooks or self._console_hooks(config)
        self.console = ConsoleRunner(config, self.console_view, hooks=hooks)
        if not self.console.start():
            self.console = None

    def _console_hooks(self, config: Config) -> Any:
        """What the console plugs into: corrections teach the site store, the site's labels
        are offered on the review page, the fill monitor's levels are shown, the Taught page
        reads the site store."""
        from bin_daemon.console.state import Hooks

        return Hooks(
            on_correction=self.site_link.queue_correction,
            extra_labels=self.site_link.labels,
            fill_levels=self.fill.levels if self.fill is not None else None,
            site_store=config.site_store_path() if config.site.enabled else None,
        )

    def _stop_console(self) -> None:
        if self.console is not None:
            self.console.stop()

    def console_view(self) -> Any:
        """A snapshot of the live state for the console (called from its threads)."""
        from bin_daemon.console.state import DaemonView

        assert self.sorter is not None and self._policy is not None
        classifier = self.sorter.classifier
        config = self._config
        telemetry = self.telemetry
        mqtt = telemetry is not None and telemetry.mqtt is not None
        return DaemonView(
            state=self.sorter.state.value,
            items_since_start=self.sorter.counts.items,
            faults=self._faults(),
            model_dir=classifier.model_path.parent,
            model_sha256=classifier.sha256,
            model_version=classifier.version,
            labels=tuple(classifier.labels),
            unsure_threshold=self._policy.unsure_threshold,
            bins={name: tuple(b.labels) for name, b in config.bins.items()},
            fallback_bin=config.fallback_bin,
            decide=self._policy.decide,
            spool=self._spool,
            started_at=self._started_wall,
            uptime_s=time.monotonic() - self._started_mono,
            telemetry_configured=mqtt,
            telemetry_connected=telemetry.connected if mqtt else None,
            tta=getattr(classifier, "tta", "none"),
            class_bias=getattr(classifier, "class_bias", MappingProxyType({})),
            site_head=getattr(classifier, "head", None),
            site_examples=getattr(classifier, "examples", 0),
            model_labels=tuple(getattr(classifier, "classifier", classifier).labels),
        )

    def _summary(self) -> str:
        assert self.sorter is not None
        counts = self.sorter.counts
        bins = ", ".join(f"{name} {n}" for name, n in sorted((counts.per_bin or {}).items()))
        return f"sorted {counts.items} items ({bins or 'none'}); {counts.unsure} unsure, {counts.errors} errors"


def run(options: RunOptions, **kwargs: Any) -> int:
    service = Service(options, **kwargs)
    restore = service.install_signal_handlers()
    try:
        return service.run()
    finally:
        restore()
