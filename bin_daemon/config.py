"""The daemon's configuration: one YAML file, validated by pydantic.

Every key is described (``check-config --print-default`` prints the commented default), units
are in the names, unknown keys are rejected, and every error names the file, the line and the
key, e.g. ``/etc/bin-daemon/config.yaml:12: bins.recycling.servo_gpoi: unknown key``.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from bin_daemon.errors import ConfigError
from bin_daemon.paths import PACKAGE_DIR

DEFAULT_CONFIG_PATH = PACKAGE_DIR / "default_config.yaml"

GpioPin = Annotated[int, Field(ge=0, le=27, description="BCM GPIO number (0-27)")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Section):
    dir: Path | None = Field(
        None,
        description="Model directory (waste_classifier.tflite, labels.txt, model_card.json); "
        "null = the model shipped with the package. A relative path is taken from the "
        "config file's folder.",
    )
    num_threads: int = Field(2, ge=1, le=16, description="Interpreter threads")
    unsure_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Below this confidence the item is 'unsure' and goes to the fallback bin; "
        "null = the threshold in the model card",
    )
    on_sha256_mismatch: Literal["refuse", "warn"] = Field(
        "refuse", description="What to do when the model file does not match its card's sha256"
    )
    # --- model signatures (bin_daemon/model/signing.py) ---
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="The fleet owner's ed25519 public keys (the base64 line 'bin-daemon model "
        "keygen' prints); a model rolled out over MQTT must be signed by one of them "
        "(empty: roll-outs are refused); 'model install --config' checks them too",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                raw = base64.b64decode(text.strip(), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"{text[:20]!r}: not an ed25519 public key (the 44-character base64 line "
                    "'bin-daemon model keygen' prints)"
                )
        return [text.strip() for text in value]

    # --- end of model signatures ---
    tta: Literal["none", "flip"] = Field(
        "none",
        description="Test-time augmentation: none, or flip (the frame and its mirror image, "
        "probabilities averaged; two classifications per item)",
    )
    class_bias: dict[str, Annotated[float, Field(ge=-4.0, le=4.0)]] = Field(
        default_factory=dict,
        description="A prior shift per label: added to the label's log-probability after the "
        "model (and the site head), e.g. {trash: 1.0} makes trash win more often, so fewer "
        "landfill items reach recycling and more recyclables reach landfill; -4 to 4; empty = "
        "the model's own probabilities (README, 'The model')",
    )


class _SensorSection(_Section):
    """Settings every sensor type has."""

    stuck_after_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Active this long without a new item: a sensor fault (reported; no lid "
        "moves) until it clears",
    )


class IrSensorConfig(_SensorSection):
    type: Literal["ir"] = Field(description="Infrared break-beam / reflective sensor")
    gpio: GpioPin
    active_low: bool = Field(
        True, description="True when the sensor pulls its output low on an object"
    )
    pull_up: bool | None = Field(
        None, description="Internal pull resistor: true=up, false=down, null=none (floating)"
    )
    debounce_s: float = Field(0.05, ge=0, le=5, description="Must stay active this long to count")

    @model_validator(mode="after")
    def _check(self) -> IrSensorConfig:
        if self.pull_up is not None and self.pull_up != self.active_low:
            raise ValueError(
                f"pull_up: {str(self.pull_up).lower()} needs active_low: "
                f"{str(self.pull_up).lower()} (a pulled-up input is active low)"
            )
        return self


class UltrasonicSensorConfig(_SensorSection):
    type: Literal["hcsr04"] = Field(description="HC-SR04 ultrasonic distance sensor")
    trigger_gpio: GpioPin
    echo_gpio: GpioPin
    trigger_distance_m: float = Field(
        0.15, gt=0, le=4, description="An object nearer than this is an item on the flap"
    )
    max_distance_m: float = Field(1.0, gt=0, le=4, description="Readings are capped here")
    debounce_s: float = Field(0.1, ge=0, le=5, description="Must stay active this long to count")
    echo_timeout_s: float = Field(
        1.0, gt=0, le=10, description="No echo reading for this long: a sensor fault"
    )

    @model_validator(mode="after")
    def _check(self) -> UltrasonicSensorConfig:
        if self.trigger_distance_m >= self.max_distance_m:
            raise ValueError(
                f"trigger_distance_m ({self.trigger_distance_m}) must be less than "
                f"max_distance_m ({self.max_distance_m})"
            )
        if self.trigger_gpio == self.echo_gpio:
            raise ValueError("trigger_gpio and echo_gpio must be different pins")
        return self


SensorConfig = Annotated[IrSensorConfig | UltrasonicSensorConfig, Field(discriminator="type")]


class CameraConfig(_Section):
    width_px: int = Field(640, ge=64, le=4608, description="Preview stream width")
    height_px: int = Field(480, ge=64, le=3456, description="Preview stream height")
    capture_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Give up on a fresh frame after this long"
    )
    max_stale_frames: int = Field(
        5, ge=1, le=100, description="Frames older than the trigger discarded before giving up"
    )
    capture_attempts: int = Field(
        3, ge=1, le=10, description="Tries per item (capture error, timeout, stale or black frame)"
    )
    retry_backoff_s: float = Field(
        0.2, ge=0, le=10, description="Wait before the second try; doubled for each further one"
    )
    black_frame_level: float = Field(
        3.0,
        ge=0,
        le=255,
        description="A frame whose mean brightness (0-255) is below this is black (lens "
        "covered, sensor dead) and is retried; 0 = never",
    )


# --- fill level (issue 16): an optional HC-SR04 per bin, looking down at the waste ---------


class FillConfig(_Section):
    trigger_gpio: GpioPin
    echo_gpio: GpioPin
    empty_distance_m: float = Field(
        gt=0, le=4, description="Sensor to the bottom of the empty bin (0% full)"
    )
    full_distance_m: float = Field(
        gt=0, le=4, description="Sensor to the waste when the bin is full (100%)"
    )
    warn_percent: float = Field(75, ge=0, le=100, description="At or above: warned once")
    full_percent: float = Field(
        90, ge=0, le=100, description="At or above: full; its items go to overflow_bin"
    )
    hysteresis_percent: float = Field(
        10,
        ge=0,
        le=50,
        description="A warned or full bin clears only when it falls this far below its threshold",
    )
    overflow_bin: str | None = Field(
        None,
        description="Where this bin's items go while it is full; null = fallback_bin (for "
        "the fallback bin itself: nowhere, it keeps taking them)",
    )
    readings: int = Field(5, ge=1, le=25, description="Readings per measurement (their median)")
    agreement_m: float = Field(
        0.03,
        gt=0,
        le=1,
        description="Consecutive readings must agree within this, or the measurement is dropped",
    )
    interval_s: float = Field(
        60, ge=1, le=86400, description="How often the level is measured (lid closed, bin idle)"
    )
    echo_timeout_s: float = Field(
        1.0, gt=0, le=10, description="No echo for this long: the level is unknown"
    )

    @model_validator(mode="after")
    def _check(self) -> FillConfig:
        if self.full_distance_m >= self.empty_distance_m:
            raise ValueError(
                f"full_distance_m ({self.full_distance_m:g}) must be less than "
                f"empty_distance_m ({self.empty_distance_m:g})"
            )
        if self.warn_percent > self.full_percent:
            raise ValueError(
                f"warn_percent ({self.warn_percent:g}) must not be above full_percent "
                f"({self.full_percent:g})"
            )
        if self.trigger_gpio == self.echo_gpio:
            raise ValueError("trigger_gpio and echo_gpio must be different pins")
        return self


class BinConfig(_Section):
    labels: list[str] = Field(default_factory=list, description="Model labels sorted into this bin")
    servo_gpio: GpioPin
    open_angle_deg: float = Field(90.0, description="Servo angle with the lid open")
    closed_angle_deg: float = Field(0.0, description="Servo angle with the lid closed")
    min_angle_deg: float = Field(0.0, description="Servo angle at min_pulse_width_s")
    max_angle_deg: float = Field(180.0, description="Servo angle at max_pulse_width_s")
    min_pulse_width_s: float = Field(0.0005, gt=0, lt=0.02, description="Pulse at min_angle_deg")
    max_pulse_width_s: float = Field(0.0025, gt=0, lt=0.02, description="Pulse at max_angle_deg")
    fill: FillConfig | None = Field(None, description="Fill-level sensor (HC-SR04); null = none")

    @model_validator(mode="after")
    def _check(self) -> BinConfig:
        if self.min_pulse_width_s >= self.max_pulse_width_s:
            raise ValueError("min_pulse_width_s must be less than max_pulse_width_s")
        low, high = sorted((self.min_angle_deg, self.max_angle_deg))
        if low == high:
            raise ValueError("min_angle_deg and max_angle_deg must differ")
        for name in ("open_angle_deg", "closed_angle_deg"):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g} degrees")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("a label is listed twice")
        return self


class TimingConfig(_Section):
    hold_open_s: float = Field(3.0, ge=0, le=60, description="Lid stays open this long")
    lid_move_s: float = Field(
        0.6, ge=0, le=5, description="Time a servo needs to reach its angle before it is detached"
    )
    cooldown_s: float = Field(1.0, ge=0, le=60, description="Pause after an item before re-arming")
    poll_interval_s: float = Field(0.02, gt=0, le=1, description="How often the sensor is read")
    max_open_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Hard cap: a lid open longer than this is driven closed, whatever happens",
    )

    @model_validator(mode="after")
    def _check(self) -> TimingConfig:
        if self.max_open_s <= self.hold_open_s + self.lid_move_s:
            raise ValueError(
                f"max_open_s ({self.max_open_s:g}) must be more than hold_open_s + lid_move_s "
                f"({self.hold_open_s + self.lid_move_s:g})"
            )
        return self


class SpoolConfig(_Section):
    save: Literal["none", "unsure", "all"] = Field(
        "unsure", description="Which items' frames are kept (with their event) for retraining"
    )
    dir: Path | None = Field(
        None,
        description="Spool folder; null = $STATE_DIRECTORY/spool under systemd, else "
        "~/.local/state/bin-daemon/spool",
    )
    quota_mb: float = Field(200, gt=0, description="Oldest files are deleted beyond this size")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of saved frames")


class EventLogConfig(_Section):
    path: Path | None = Field(
        None,
        description="SQLite event log (one row per item); null = $STATE_DIRECTORY/"
        "events.sqlite3 under systemd, else ~/.local/state/bin-daemon/events.sqlite3",
    )
    keep_days: float = Field(
        365, ge=0, le=36500, description="Items older than this are deleted; 0 = keep all"
    )


# --- site learning (bin_daemon/site/) ------------------------------------------------------
class SiteConfig(_Section):
    enabled: bool = Field(
        True,
        description="Apply what the site taught (bin-daemon site add) to every item; false = "
        "the model alone",
    )
    path: Path | None = Field(
        None,
        description="SQLite site store; null = $STATE_DIRECTORY/site.sqlite3 under systemd, "
        "else ~/.local/state/bin-daemon/site.sqlite3",
    )
    quota_mb: float = Field(
        50, gt=0, le=10000, description="`site add` is refused beyond this size (JPEGs kept)"
    )


# -------------------------------------------------------------------------------------------


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    journal: Literal["auto", "yes", "no"] = Field(
        "auto", description="Structured journal records: auto = when running under systemd"
    )


_BIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PASSWORD_HELP = (
    "a password does not belong in the config file (it is readable by the service's group "
    "and ends up in backups): put it in /etc/bin-daemon/mqtt_password and load it with "
    "LoadCredential=mqtt_password:/etc/bin-daemon/mqtt_password in a drop-in "
    "(systemd/bin-daemon.service.d/mqtt.conf.example), or set BIN_DAEMON_MQTT_PASSWORD in an "
    "EnvironmentFile="
)


class MqttConfig(_Section):
    host: str = Field(min_length=1, description="MQTT broker host name or address")
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port; null = 8883 with tls, else 1883"
    )
    bin_id: str = Field(
        description="This bin's name in the topics (smartbin/<bin_id>/...): letters, digits, "
        "'.', '_', '-'; not 'all' (the fleet-wide roll-out topic)"
    )
    tls: bool = Field(False, description="TLS to the broker, checked against the system CAs")
    ca_file: Path | None = Field(None, description="With tls: a CA bundle instead of the system's")
    username: str | None = Field(
        None,
        description="Broker user; the password comes from the systemd credential "
        "mqtt_password or $BIN_DAEMON_MQTT_PASSWORD, never from this file",
    )
    password: Any = Field(None, exclude=True, description="Refused: see username")
    keepalive_s: int = Field(
        30, ge=5, le=600, description="Keep-alive; the broker marks the bin offline after 1.5x"
    )
    max_inflight: int = Field(
        20, ge=1, le=1000, description="Events sent but not yet acknowledged, at most"
    )
    drain_s: float = Field(
        3.0, ge=0, le=60, description="On stop, wait this long for unacknowledged events"
    )
    rollout: bool = Field(
        True,
        description="Accept model roll-outs on smartbin/<bin_id>/model and smartbin/all/model "
        "(needs model.dir to be a model store's 'current')",
    )
    max_model_mb: float = Field(
        50, gt=0, le=1000, description="A roll-out's download is refused beyond this size"
    )

    @field_validator("password")
    @classmethod
    def _no_password(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(PASSWORD_HELP)
        return None

    @field_validator("bin_id")
    @classmethod
    def _check_bin_id(cls, value: str) -> str:
        if not _BIN_ID.match(value):
            raise ValueError(
                f"bin_id {value!r}: use 1-64 letters, digits, '.', '_' or '-' (it is an MQTT "
                "topic level: no '/', '+', '#' or spaces)"
            )
        if value == "all":
            raise ValueError("bin_id 'all' is the fleet-wide roll-out topic; pick another name")
        return value

    def broker_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)


class PrometheusConfig(_Section):
    textfile_path: Path | None = Field(
        None,
        description="node_exporter textfile collector output (a .prom file, written "
        "atomically), e.g. /var/lib/prometheus/node-exporter/bin_daemon.prom; null = off",
    )


class TelemetryConfig(_Section):
    metrics_interval_s: float = Field(
        60, ge=1, le=3600, description="How often metrics are published and written"
    )
    mqtt: MqttConfig | None = Field(None, description="MQTT broker; null = no MQTT")
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)


# --- the web console (bin_daemon/console/; issue 14) ------------------------------------

CONSOLE_PASSWORD_HELP = (
    "a password does not belong in the config file: put it in /etc/bin-daemon/console_password "
    "(mode 0600) and load it with LoadCredential=console_password:/etc/bin-daemon/"
    "console_password in a drop-in (systemd/bin-daemon.service.d/console.conf.example), or "
    "name a file with console.password_file"
)
_LISTEN = re.compile(
    r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})$"
)


class ConsoleConfig(_Section):
    listen: str | None = Field(
        None,
        description="HOST:PORT the web console listens on, e.g. 127.0.0.1:8080 (this Pi only) "
        "or 0.0.0.0:8080 (the local network; open the port with the systemd drop-in); "
        "null = no console",
    )
    password_file: Path | None = Field(
        None,
        description="File whose first line is the console password; null = the systemd "
        "credential console_password ($CREDENTIALS_DIRECTORY/console_password). A relative "
        "path is taken from the config file's folder.",
    )
    password: Any = Field(None, exclude=True, description="Refused: see password_file")
    session_hours: float = Field(
        12, gt=0, le=720, description="A browser stays logged in this long"
    )
    max_upload_mb: float = Field(
        10, gt=0, le=50, description="Larger uploads on the classify page are refused"
    )
    max_upload_megapixels: float = Field(
        25,
        gt=0,
        le=64,
        description="Uploaded images with more pixels are refused before decoding (memory)",
    )
    recent_items: int = Field(12, ge=1, le=100, description="Items on the status page")
    refresh_s: float = Field(
        2.0, ge=0.5, le=60, description="How often the status page updates itself"
    )
    max_login_failures: int = Field(
        5, ge=1, le=100, description="Wrong passwords per client per minute before it must wait"
    )
    max_requests_per_s: float = Field(
        10,
        gt=0,
        le=1000,
        description="Pages and API calls per second, all clients together (bursts of 3x); "
        "more are answered 429, so no client can keep the daemon's process busy",
    )

    @field_validator("password")
    @classmethod
    def _no_password(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(CONSOLE_PASSWORD_HELP)
        return None

    @field_validator("listen", mode="before")
    @classmethod
    def _check_listen(cls, value: Any) -> str | None:
        if value is None:
            return None
        value = str(value)
        match = _LISTEN.match(value.strip())
        if not match or not 1 <= int(match.group("port")) <= 65535:
            raise ValueError(
                f"listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or "
                "[::1]:8080 (port 1-65535)"
            )
        return value.strip()

    def host_port(self) -> tuple[str, int]:
        """``listen`` split into (host, port); only when it is set."""
        assert self.listen is not None
        match = _LISTEN.match(self.listen)
        assert match is not None
        return match.group("ip6") or match.group("host"), int(match.group("port"))


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    sensor: SensorConfig = Field(description="The proximity sensor that detects an item")
    camera: CameraConfig = Field(default_factory=CameraConfig)
    bins: dict[str, BinConfig] = Field(min_length=1, description="Bins by name")
    fallback_bin: str = Field(description="Bin for unsure items and labels not listed anywhere")
    timing: TimingConfig = Field(default_factory=TimingConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    event_log: EventLogConfig = Field(default_factory=EventLogConfig)
    site: SiteConfig = Field(default_factory=SiteConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    source: str = Field("<built-in>", exclude=True, description="Where this config was read")

    def cross_check_errors(self) -> list[tuple[tuple[str, ...], str]]:
        """Checks across sections, as (key path, message): bins, labels and pins."""
        errors: list[tuple[tuple[str, ...], str]] = []
        if self.fallback_bin not in self.bins:
            errors.append(
                (
                    ("fallback_bin",),
                    f"'{self.fallback_bin}' is not one of the bins ({', '.join(self.bins)})",
                )
            )
        owner: dict[str, str] = {}
        for name, bin_ in self.bins.items():
            for index, label in enumerate(bin_.labels):
                if label in owner:
                    errors.append(
                        (
                            ("bins", name, "labels", index),
                            f"label '{label}' is already in bin '{owner[label]}'",
                        )
                    )
                owner.setdefault(label, name)
        for label in self.model.class_bias:
            if label not in owner:
                errors.append(
                    (
                        ("model", "class_bias", label),
                        f"'{label}' is in no bin's labels ({', '.join(owner)})",
                    )
                )
        pins: dict[int, str] = {}
        for where, pin in self.gpio_pins():
            if pin in pins:
                errors.append(
                    (tuple(where.split(".")), f"GPIO {pin} is already used by {pins[pin]}")
                )
            pins.setdefault(pin, where)
        for name, bin_ in self.bins.items():  # fill sensors (issue 16)
            overflow = bin_.fill.overflow_bin if bin_.fill is not None else None
            if overflow is not None and overflow not in self.bins:
                errors.append(
                    (
                        ("bins", name, "fill", "overflow_bin"),
                        f"'{overflow}' is not one of the bins ({', '.join(self.bins)})",
                    )
                )
            elif overflow == name:
                errors.append(
                    (("bins", name, "fill", "overflow_bin"), "a bin cannot overflow into itself")
                )
        return errors

    def gpio_pins(self) -> list[tuple[str, int]]:
        """Every (key, pin) the config uses."""
        pins: list[tuple[str, int]] = []
        if isinstance(self.sensor, IrSensorConfig):
            pins.append(("sensor.gpio", self.sensor.gpio))
        else:
            pins += [
                ("sensor.trigger_gpio", self.sensor.trigger_gpio),
                ("sensor.echo_gpio", self.sensor.echo_gpio),
            ]
        pins += [(f"bins.{name}.servo_gpio", b.servo_gpio) for name, b in self.bins.items()]
        for name, b in self.bins.items():  # fill sensors (issue 16)
            if b.fill is not None:
                pins += [
                    (f"bins.{name}.fill.trigger_gpio", b.fill.trigger_gpio),
                    (f"bins.{name}.fill.echo_gpio", b.fill.echo_gpio),
                ]
        return pins

    def overflow_for(self) -> dict[str, str]:
        """bin -> where its items go while it is full, for every bin with a fill sensor and
        somewhere else to go (the fallback bin's null overflow is none: it keeps its items)."""
        overflow = {}
        for name, b in self.bins.items():
            target = (b.fill.overflow_bin or self.fallback_bin) if b.fill is not None else name
            if target != name:
                overflow[name] = target
        return overflow

    def bin_for_label(self) -> dict[str, str]:
        """label -> bin name, for every label listed in a bin."""
        return {label: name for name, b in self.bins.items() for label in b.labels}

    def check_labels(
        self, model_labels: Sequence[str], site_labels: Sequence[str] = ()
    ) -> list[str]:
        """Check the bins against the labels the model and the site store can output.

        A label listed in a bin that neither knows (a typo, or a site label not taught yet)
        is an error naming it; a known label no bin lists goes to the fallback bin, returned
        as a warning line.
        """
        site_only = [label for label in site_labels if label not in model_labels]
        known = set(model_labels) | set(site_only)
        for name, b in self.bins.items():
            unknown = [label for label in b.labels if label not in known]
            if unknown:
                site = (
                    f" nor the site store's ({', '.join(site_only)})"
                    if site_only
                    else " nor taught to the site store (bin-daemon site add --label ...)"
                )
                raise ConfigError(
                    f"{self.source}: bins.{name}.labels: {', '.join(map(repr, unknown))} "
                    f"not among the model's labels ({', '.join(model_labels)}){site}"
                )
        listed = self.bin_for_label()
        return [
            f"label '{label}' is in no bin: it goes to the fallback bin '{self.fallback_bin}'"
            for label in [*model_labels, *site_only]
            if label not in listed
        ]

    def model_dir(self) -> Path | None:
        if self.model.dir is None or self.model.dir.is_absolute() or self.source.startswith("<"):
            return self.model.dir
        return Path(self.source).parent / self.model.dir

    def event_log_path(self) -> Path:
        from bin_daemon.records.eventlog import default_path

        path = self.event_log.path
        if path is None:
            return default_path()
        if path.is_absolute() or self.source.startswith("<"):
            return path
        return Path(self.source).parent / path

    def site_store_path(self, *, for_cli: bool = False) -> Path:
        """The site store: site.path, else in the state folder (bin_daemon.site.store)."""
        from bin_daemon.site.store import default_path

        path = self.site.path
        if path is None:
            return default_path(for_cli=for_cli)
        if path.is_absolute() or self.source.startswith("<"):
            return path
        return Path(self.source).parent / path

    def prometheus_path(self) -> Path | None:
        path = self.telemetry.prometheus.textfile_path
        if path is None or path.is_absolute() or self.source.startswith("<"):
            return path
        return Path(self.source).parent / path

    def console_password_file(self) -> Path | None:
        path = self.console.password_file
        if path is None or path.is_absolute() or self.source.startswith("<"):
            return path
        return Path(self.source).parent / path

    def spool_dir(self) -> Path:
        if self.spool.dir is not None:
            if self.spool.dir.is_absolute() or self.source.startswith("<"):
                return self.spool.dir
            return Path(self.source).parent / self.spool.dir
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0]) / "spool"
        base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
        return Path(base) / "bin-daemon" / "spool"


# --- loading -----------------------------------------------------------------------------


def default_config_text() -> str:
    return DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a config file (the bundled default when ``path`` is None)."""
    if path is None:
        return parse_config(default_config_text(), source=str(DEFAULT_CONFIG_PATH))
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<string>") -> Config:
    """Parse YAML text and validate it; every error is a ConfigError naming source:line."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = error.problem or error.context or "invalid YAML"
        raise ConfigError(f"{source}{line}: YAML syntax error: {what}") from None
    except YAMLError as error:  # e.g. a control character: a position, not a mark
        position = getattr(error, "position", None)
        line = text[:position].count("\n") + 1 if isinstance(position, int) else 1
        what = (str(error).splitlines() or ["invalid YAML"])[0]
        raise ConfigError(f"{source}:{line}: YAML error: {what}") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}:1: the config must be a mapping of keys, not {_kind(data)}")
    try:
        config = Config.model_validate({**_plain(data), "source": source})
    except ValidationError as error:
        raise ConfigError(_render(error, data, source)) from None
    problems = config.cross_check_errors()
    if problems:
        lines = []
        for loc, message in problems:
            line, keys = _locate(data, loc)
            lines.append(f"{source}:{line}: {_dotted(keys)}: {message}")
        raise ConfigError("\n".join(lines))
    return config


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


def _render(error: ValidationError, data: CommentedMap, source: str) -> str:
    """One line per pydantic error: ``file:line: dotted.key: message``."""
    lines = []
    for item in error.errors(include_url=False):
        line, keys = _locate(data, item["loc"])
        key = _dotted(keys) or "(top level)"
        lines.append(f"{source}:{line}: {key}: {_message(item)}")
    return "\n".join(dict.fromkeys(lines))


def _dotted(keys: list[str]) -> str:
    return ".".join(keys).replace(".[", "[")


def _message(item: Mapping[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = item.get("ctx", {})
        return f"unknown type {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "needs a 'type' key (ir or hcsr04)"
    message = str(item["msg"]).removeprefix("Value error, ")
    value = item.get("input")
    if isinstance(value, str | int | float | bool) and not kind.startswith("value_error"):
        message += f" (got {value!r})"
    return message


def _locate(data: Any, loc: Iterable[Any]) -> tuple[int, list[str]]:
    """Map a pydantic error location to (1-based YAML line, the dotted key path)."""
    node: Any = data
    line = 1
    keys: list[str] = []
    loc = list(loc)
    sensor = data.get("sensor")
    if loc == ["sensor"] and isinstance(sensor, Mapping) and "type" in sensor:
        loc.append("type")  # a bad sensor type: point at the type key itself
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            keys.append(_key_text(part))
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            keys.append(f"[{part}]")
            node = node[part]
        elif isinstance(node, CommentedMap) and isinstance(part, str) and part in _TAGS:
            continue  # a discriminated union's tag (e.g. 'ir') is not a key in the file
        else:
            keys.append(_key_text(part))
            node = None
    return line, keys


def _key_text(key: Any) -> str:
    """A key as the error shows it: plain if it looks like a key, else quoted (``':'``)."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else repr(text)


_TAGS = {"ir", "hcsr04"}
