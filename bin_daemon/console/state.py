"""What the console shows and does, without any web framework: the daemon's live state,
the review queue, corrections, classifying an upload, the event log.

The service hands the console a :class:`DaemonView` function (a snapshot of its live state,
taken from any thread) and the console reads the same records the daemon writes: the event
log through its own SQLite connection, the spool through :meth:`Spool.frame_path`. It never
touches the hardware and never uses the sorter's interpreter: uploads are classified by a
:class:`Classifier` of its own (one thread, one request at a time), loaded from the folder
of the model the daemon runs and reloaded when that model changes.

The JSON of the API is these pydantic models.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bin_daemon.console.taught import RemovedExample, Taught, TaughtError, TaughtList
from bin_daemon.errors import BinDaemonError, ImageError
from bin_daemon.model import preprocess
from bin_daemon.model.classifier import Classifier
from bin_daemon.records import eventlog
from bin_daemon.records.eventlog import EventLog, UnknownItemError
from bin_daemon.records.events import iso_utc
from bin_daemon.records.spool import ITEM_ID_PATTERN, Spool
from bin_daemon.site.store import LABEL_PATTERN

log = logging.getLogger(__name__)

THUMBNAIL_PX = 224
EVENTS_MAX = 1000
CSV_PAGE_ROWS = 500


# -- the daemon's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonView:
    """A snapshot of the running daemon (the service builds it on request, any thread)."""

    state: str
    items_since_start: int
    faults: Mapping[str, str]
    model_dir: Path
    model_sha256: str
    model_version: str
    labels: tuple[str, ...]
    unsure_threshold: float
    bins: Mapping[str, tuple[str, ...]]
    fallback_bin: str
    decide: Callable[[str | None, float], Any]
    """The running policy: (label, confidence) -> BinChoice(bin, unsure, reason)."""
    spool: Spool | None
    started_at: float
    """Wall time (epoch s) the daemon started."""
    uptime_s: float
    telemetry_configured: bool = False
    telemetry_connected: bool | None = None
    tta: str = "none"
    """The daemon's test-time augmentation (config ``model.tta``): uploads get it too."""
    class_bias: Mapping[str, float] = field(default_factory=dict)
    """The daemon's prior shift (config ``model.class_bias``): uploads get it too."""
    site_head: Any = None
    """The site head the daemon sorts with (``bin_daemon.site.head.SiteHead``; only read here,
    a refit makes a new one), or None: uploads get it too."""
    site_examples: int = 0
    """How many site-store examples that head was fitted on."""
    model_labels: tuple[str, ...] = ()
    """The model's own labels (``labels`` adds the site store's new ones)."""


class ConsoleError(BinDaemonError):
    """A request the console refuses: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the JSON ---------------------------------------------------------------------------------


class Score(BaseModel):
    label: str
    score: float


class Item(BaseModel):
    item_id: str
    ts: str
    label: str | None
    confidence: float | None
    top: list[Score] = Field(default_factory=list)
    bin: str
    unsure: bool
    lid: str = ""
    error: str | None = None
    corrected_label: str | None = None
    corrected_at: str | None = None
    site: bool = False
    """What the bin was taught (the site head) changed the model's answer."""
    model_label: str | None = None
    """The model's own label, when the site head changed it."""
    frame_url: str | None = None
    """``/frames/<item_id>.jpg`` when the spool has the item's frame."""


class BinStatus(BaseModel):
    name: str
    labels: list[str]
    count_today: int
    fill_percent: float | None = None
    """From a fill-level sensor; null where the bin has none or no valid reading yet."""


class ModelInfo(BaseModel):
    version: str
    sha256: str
    labels: list[str]
    unsure_threshold: float
    tta: str = "none"
    """Config ``model.tta``."""
    class_bias: dict[str, float] = {}
    """Config ``model.class_bias``: the prior shift per label in force (empty: none)."""
    site_examples: int = 0
    """The site store's examples applied by the site head (0: the model alone)."""


class TelemetryInfo(BaseModel):
    configured: bool
    connected: bool | None
    """null: no MQTT broker configured."""


class Status(BaseModel):
    now: str
    started_at: str
    uptime_s: float
    state: str
    items_since_start: int
    today_since: str
    """Local midnight, as ISO UTC: "today" counts items from here."""
    items_today: int
    unsure_today: int
    bins: list[BinStatus]
    model: ModelInfo
    degraded: dict[str, str]
    """Faulty devices and services (camera, sensor, event log, telemetry): their messages."""
    telemetry: TelemetryInfo
    event_log: bool
    last_items: list[Item]


class ReviewList(BaseModel):
    items: list[Item]
    labels: list[str]
    """The choices: the model's labels, then the site's, then labels typed before."""
    to_review: int
    """Items in the list without a person's label yet."""


class Correction(BaseModel):
    label: str = Field(max_length=200)


class CorrectionResult(BaseModel):
    item_id: str
    label: str
    model_label: str | None
    corrected_at: str | None
    note: str | None = None
    """Set when the correction is saved but the site store's hook failed."""


class ClassifyResult(BaseModel):
    label: str
    confidence: float
    top: list[Score]
    bin: str
    unsure: bool
    reason: str
    site_examples: int = 0
    """The site store's examples in the head that was applied (0: the model alone)."""
    model_label: str | None = None
    """The model's own label, when the site head changed it (else None)."""
    model_version: str
    model_sha256: str
    width_px: int
    height_px: int
    classify_ms: float


# -- the console ------------------------------------------------------------------------------


@dataclass
class Hooks:
    """What other parts plug in (defaults: nothing)."""

    on_correction: Callable[[str, str, Path | None], None] | None = None
    """Called after a correction is in the event log: (item_id, label, the frame or None)."""
    extra_labels: Callable[[], list[str]] = list
    """Labels the site knows beyond the model's (choices on the review page)."""
    fill_levels: Callable[[], Mapping[str, float | None]] | None = None
    """Bin name -> fill percent 0..100 or None (a FillMonitor's ``levels``)."""
    site_store: Path | None = None
    """The site store's file (the Taught page); None: site learning is off."""


@contextmanager
def _taught_errors() -> Iterator[None]:
    try:
        yield
    except TaughtError as error:
        raise ConsoleError(error.status, str(error)) from None


def default_upload_classifier(model_dir: Path) -> Classifier:
    return Classifier.load(model_dir, num_threads=1, on_sha256_mismatch="warn")


class Console:
    """The console's state and actions; thread-safe (the web server calls from a pool)."""

    def __init__(
        self,
        view: Callable[[], DaemonView],
        *,
        event_log_path: Path | None,
        hooks: Hooks | None = None,
        recent_items: int = 12,
        max_upload_bytes: int = 10 * 1024 * 1024,
        max_upload_pixels: int = 25_000_000,
        wall_clock: Callable[[], float] = time.time,
        classifier_factory: Callable[[Path], Any] = default_upload_classifier,
        status_cache_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self.hooks = hooks or Hooks()
        self.recent_items = recent_items
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_pixels = max_upload_pixels
        self._wall = wall_clock
        self._classifier_factory = classifier_factory
        self._log_lock = threading.Lock()
        self._classify_lock = threading.Lock()
        self._classifier: Any = None
        self._classifier_sha = ""
        self.status_cache_s = status_cache_s
        """Answer status requests this close together with the same snapshot (less work for
        the daemon's process when many clients poll)."""
        self._monotonic = monotonic
        self._status_lock = threading.Lock()
        self._status: tuple[float, Any, Status] | None = None
        self._taught = Taught(self.hooks.site_store)
        self.event_log: EventLog | None = None
        if event_log_path is not None:
            try:
                self.event_log = EventLog(event_log_path)
            except BinDaemonError as error:
                log.error("console: %s; status, review and events are limited", error)

    def close(self) -> None:
        self._taught.close()
        if self.event_log is not None:
            with self._log_lock:
                self.event_log.close()

    def view(self) -> DaemonView:
        return self._view()

    # -- status --------------------------------------------------------------------------

    def status(self) -> Status:
        """The live state. Within ``status_cache_s`` of the last one, and while the daemon
        has sorted nothing and no fault has come or gone, the same object again."""
        view = self._view()
        key = (view.items_since_start, tuple(view.faults.items()), view.model_sha256, view.state)
        with self._status_lock:
            now = self._monotonic()
            if self._status is not None:
                at, seen, status = self._status
                if seen == key and now - at < self.status_cache_s:
                    return status
            status = self._fresh_status(view)
            self._status = (now, key, status)
            return status

    def _fresh_status(self, view: DaemonView) -> Status:
        now = self._wall()
        midnight = datetime.fromtimestamp(now).astimezone()
        midnight = midnight.replace(hour=0, minute=0, second=0, microsecond=0)
        today = iso_utc(midnight.timestamp())
        counts: dict[str, int] = {}
        last: list[dict[str, Any]] = []
        unsure_today = 0
        if self.event_log is not None:
            with self._log_lock:
                counts = self.event_log.counts_by_bin(since=today)
                last = self.event_log.recent(limit=self.recent_items)
                unsure_today = self.event_log.count_unsure(since=today)
        fill = self._fill_levels()
        bins = [
            BinStatus(
                name=name,
                labels=list(labels),
                count_today=counts.get(name, 0),
                fill_percent=fill.get(name),
            )
            for name, labels in view.bins.items()
        ]
        degraded = dict(view.faults)
        if self.event_log is None:
            degraded.setdefault("event_log", "event log: not available to the console")
        return Status(
            now=iso_utc(now),
            started_at=iso_utc(view.started_at),
            uptime_s=round(view.uptime_s, 1),
            state=view.state,
            items_since_start=view.items_since_start,
            today_since=today,
            items_today=sum(counts.values()),
            unsure_today=unsure_today,
            bins=bins,
            model=ModelInfo(
                version=view.model_version,
                sha256=view.model_sha256,
                labels=list(view.labels),
                unsure_threshold=view.unsure_threshold,
                tta=view.tta,
                class_bias=dict(view.class_bias),
                site_examples=view.site_examples if view.site_head is not None else 0,
            ),
            degraded=degraded,
            telemetry=TelemetryInfo(
                configured=view.telemetry_configured, connected=view.telemetry_connected
            ),
            event_log=self.event_log is not None,
            last_items=[self._item(record, view.spool) for record in last],
        )

    def _fill_levels(self) -> Mapping[str, float | None]:
        if self.hooks.fill_levels is None:
            return {}
        try:
            levels = self.hooks.fill_levels()
        except Exception as error:  # a sensor problem must not take the page down
            log.warning("console: fill levels unavailable (%s)", error)
            return {}
        return {
            name: None if value is None else round(float(value), 1)
            for name, value in levels.items()
        }

    # -- events --------------------------------------------------------------------------

    def events(self, since: str | None = None, limit: int = 200) -> list[Item]:
        """The newest items first; ``since`` as ``bin-daemon events --since`` takes it."""
        event_log = self._need_log()
        limit = max(1, min(limit, EVENTS_MAX))
        since_iso = self._since(since)
        view = self._view()
        with self._log_lock:
            records = event_log.recent(limit=limit, since=since_iso)
        return [self._item(record, view.spool) for record in records]

    def events_csv(self, since: str | None = None) -> Iterator[str]:
        """The event log from ``since`` on, in the order it was written, as CSV text.

        Read a page of rows at a time (a year of items need not fit in memory); a bad
        ``since`` raises before the first line.
        """
        event_log = self._need_log()
        since_iso = self._since(since)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        yield _take(buffer)
        after = 0
        while True:
            with self._log_lock:
                page = event_log.records_after(after, since=since_iso, limit=CSV_PAGE_ROWS)
            if not page:
                return
            for _row_id, record in page:
                writer.writerow([_csv_cell(record.get(column)) for column in CSV_COLUMNS])
            after = page[-1][0]
            yield _take(buffer)

    @staticmethod
    def _since(since: str | None) -> str | None:
        if since is None or not since.strip():
            return None
        try:
            return eventlog.parse_since(since)
        except ValueError as error:
            raise ConsoleError(400, str(error).replace("--since", "since")) from None

    # -- review --------------------------------------------------------------------------

    def review(self, *, limit: int = 60, pending_only: bool = False) -> ReviewList:
        """Unsure items and items with a spooled frame, newest first."""
        view = self._view()
        spooled = _spooled_ids(view.spool, limit * 4)
        records: dict[str, dict[str, Any]] = {}
        if self.event_log is not None:
            with self._log_lock:
                for record in self.event_log.recent(limit=limit * 4, unsure_only=True):
                    records[record["item_id"]] = record
                missing = [item_id for item_id in spooled if item_id not in records]
                records.update(self.event_log.find(missing))
        items = [self._item(record, view.spool) for record in records.values()]
        if pending_only:
            items = [item for item in items if item.corrected_label is None]
        items.sort(key=lambda item: (item.ts, item.item_id), reverse=True)
        items = items[:limit]
        return ReviewList(
            items=items,
            labels=self.label_choices(view),
            to_review=sum(1 for item in items if item.corrected_label is None),
        )

    def label_choices(self, view: DaemonView | None = None) -> list[str]:
        view = view or self._view()
        extra: list[str] = []
        try:
            extra = list(self.hooks.extra_labels())
        except Exception as error:
            log.warning("console: the site's labels are unavailable (%s)", error)
        typed: list[str] = []
        if self.event_log is not None:
            with self._log_lock:
                typed = self.event_log.corrected_labels()
        return list(dict.fromkeys([*view.labels, *extra, *typed]))

    def correct(self, item_id: str, label: str) -> CorrectionResult:
        """A person's label for an item: into the event log, then the ``on_correction`` hook."""
        if not ITEM_ID_PATTERN.fullmatch(item_id):
            raise ConsoleError(404, f"no item {item_id!r} (not an item id)")
        view = self._view()
        label = self.normalise_label(label, view.labels)
        event_log = self._need_log()
        with self._log_lock:
            try:
                event_log.record_correction(item_id, label)
            except UnknownItemError:
                raise ConsoleError(404, f"no item {item_id} in the event log") from None
            record = event_log.find([item_id]).get(item_id, {})
        self._status = None  # show it at once
        frame = view.spool.frame_path(item_id) if view.spool is not None else None
        log.info(
            "console: item %s labelled %r by a person (the model said %r)",
            item_id,
            label,
            record.get("label"),
        )
        note = None
        if self.hooks.on_correction is not None:
            try:
                self.hooks.on_correction(item_id, label, frame)
            except Exception as error:
                note = f"saved in the event log, but the site store did not take it: {error}"
                log.error("console: item %s: %s", item_id, note)
        return CorrectionResult(
            item_id=item_id,
            label=label,
            model_label=record.get("label"),
            corrected_at=record.get("corrected_at"),
            note=note,
        )

    @staticmethod
    def normalise_label(label: str, known: Sequence[str] = ()) -> str:
        text = "_".join(label.split()).lower()  # "Coffee cup" -> "coffee_cup"
        for name in known:
            if name.lower() == text:
                return name
        if not LABEL_PATTERN.fullmatch(text):
            raise ConsoleError(
                422,
                f"label {label[:60]!r}: use 1-40 letters, digits, spaces, '_' or '-', "
                "starting with a letter or digit (spaces become '_': coffee_cup)",
            )
        return text

    def frame(self, item_id: str) -> Path | None:
        spool = self._view().spool
        return spool.frame_path(item_id) if spool is not None else None

    # -- what the bin was taught (the site store) -----------------------------------------

    def taught(self, limit: int = 60) -> TaughtList:
        """The site store's labels and its newest ``limit`` examples (1 to 500)."""
        with _taught_errors():
            view = self._view()
            labels = view.model_labels or view.labels
            return self._taught.list(view.bins, labels, max(1, min(limit, 500)))

    def taught_jpeg(self, example_id: int) -> bytes | None:
        with _taught_errors():
            return self._taught.jpeg(example_id)

    def untaught(self, example_id: int) -> RemovedExample:
        """Remove one example from the site store (the loop refits between items)."""
        with _taught_errors():
            removed = self._taught.remove(example_id)
        self._status = None  # the model tile's count, at once
        return removed

    # -- classify an upload --------------------------------------------------------------

    def classify(self, data: bytes, source: str = "upload") -> tuple[ClassifyResult, bytes]:
        """Classify an uploaded image as the daemon would; nothing is written, no lid moves.

        The result and a JPEG thumbnail of what the model sees (the centred square).
        """
        from bin_daemon.console.upload import image_header

        if len(data) > self.max_upload_bytes:
            raise ConsoleError(413, f"{source}: larger than {self.max_upload_bytes} bytes")
        try:
            _kind, width, height = image_header(data, source)
        except ImageError as error:
            raise ConsoleError(415, str(error)) from None
        if width * height > self.max_upload_pixels:
            raise ConsoleError(
                413,
                f"{source}: {width}x{height} pixels is more than the "
                f"{self.max_upload_pixels / 1e6:g} MP the console accepts",
            )
        try:
            rgb = preprocess.decode_image(data, source)
        except ImageError as error:
            raise ConsoleError(422, str(error)) from None
        view = self._view()
        with self._classify_lock:  # one upload at a time, on the console's own interpreter
            classifier = self._upload_classifier(view)
            started = time.perf_counter()
            prediction = classifier.classify(rgb)
            classify_ms = (time.perf_counter() - started) * 1000
        prediction, site_examples = self._with_site_head(view, prediction, classifier.sha256)
        choice = view.decide(prediction.label, prediction.confidence)
        thumbnail = preprocess.encode_jpeg(
            preprocess.resize(preprocess.center_square(rgb), THUMBNAIL_PX), quality=85
        )
        result = ClassifyResult(
            label=prediction.label,
            confidence=round(prediction.confidence, 4),
            top=[Score(label=name, score=round(score, 4)) for name, score in prediction.top],
            bin=choice.bin,
            unsure=choice.unsure,
            reason=choice.reason,
            site_examples=site_examples,
            model_label=prediction.model_label if getattr(prediction, "site", False) else None,
            model_version=classifier.version,
            model_sha256=classifier.sha256,
            width_px=rgb.shape[1],
            height_px=rgb.shape[0],
            classify_ms=round(classify_ms, 1),
        )
        return result, thumbnail

    @staticmethod
    def _with_site_head(view: DaemonView, prediction: Any, sha256: str) -> tuple[Any, int]:
        """The daemon's site head applied to an upload's prediction, as the loop applies it:
        (prediction, examples in the head); the model's own when there is no head, or when the
        head belongs to another model than the one that classified the upload."""
        if view.site_head is None or sha256 != view.model_sha256:
            return prediction, 0
        from bin_daemon.site.runtime import apply_site_head

        try:
            applied = apply_site_head(view.site_head, prediction, view.class_bias)
        except BinDaemonError as error:
            log.warning("console: the site head was not applied to an upload: %s", error)
            return prediction, 0
        return applied, view.site_examples

    def _upload_classifier(self, view: DaemonView) -> Any:
        if self._classifier is None or self._classifier_sha != view.model_sha256:
            try:
                self._classifier = self._classifier_factory(view.model_dir)
            except BinDaemonError as error:
                raise ConsoleError(503, f"cannot load the model for uploads: {error}") from None
            self._classifier_sha = view.model_sha256
            log.info(
                "console: classifying uploads with model %s (%s)",
                self._classifier.version,
                self._classifier.sha256[:12],
            )
        self._classifier.tta = view.tta  # as the daemon classifies (a reload may change them)
        self._classifier.class_bias = view.class_bias
        return self._classifier

    # -- helpers -------------------------------------------------------------------------

    def _need_log(self) -> EventLog:
        if self.event_log is None:
            raise ConsoleError(503, "the event log is not available (see the daemon's journal)")
        return self.event_log

    @staticmethod
    def _item(record: Mapping[str, Any], spool: Spool | None) -> Item:
        item_id = str(record.get("item_id", ""))
        has_frame = spool is not None and spool.frame_path(item_id) is not None
        return Item(
            item_id=item_id,
            ts=str(record.get("ts", "")),
            label=record.get("label"),
            confidence=record.get("confidence"),
            top=[Score(**score) for score in record.get("top") or []],
            bin=str(record.get("bin", "")),
            unsure=bool(record.get("unsure")),
            lid=str(record.get("lid", "")),
            error=record.get("error"),
            corrected_label=record.get("corrected_label"),
            corrected_at=record.get("corrected_at"),
            site=bool(record.get("site")),
            model_label=record.get("model_label") if record.get("site") else None,
            frame_url=f"/frames/{item_id}.jpg" if has_frame else None,
        )


CSV_COLUMNS = (
    "ts", "item_id", "label", "confidence", "bin", "unsure", "lid", "error",
    "corrected_label", "corrected_at", "model", "site", "model_label",
)  # fmt: skip


def _csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run as a formula."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _spooled_ids(spool: Spool | None, limit: int) -> list[str]:
    """Item ids with a frame in the spool, newest first (ids start with their UTC time)."""
    if spool is None or not spool.directory.is_dir():
        return []
    try:
        names = [p.stem for p in spool.directory.iterdir() if p.suffix == ".jpg"]
    except OSError as error:
        log.warning("console: cannot list the spool %s (%s)", spool.directory, error)
        return []
    ids = sorted((n for n in names if ITEM_ID_PATTERN.fullmatch(n)), reverse=True)
    return ids[:limit]
