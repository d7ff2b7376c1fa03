"""``bin-daemon``: the command line. Thin: parse, call, print; errors as one line, no traceback.

Exit status: 0 success, 1 an error (model, image, hardware), 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bin_daemon import __version__
from bin_daemon.errors import BinDaemonError, ConfigError, ImageError

EXIT_ERROR = 1
EXIT_CONFIG = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="config file (default: the bundled one)"
    )


def _add_hardware(parser: argparse.ArgumentParser, default: str = "pi") -> None:
    parser.add_argument(
        "--hardware",
        choices=("pi", "fake"),
        default=default,
        help=f"real GPIO and camera, or mock pins and images (default: {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bin-daemon",
        description="The smart bin: sense an item, photograph it, classify it, open its lid.",
    )
    parser.add_argument("--version", action="version", version=f"bin-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the sorting loop (what the service runs)")
    _add_config(run)
    _add_hardware(run)
    run.add_argument(
        "--images", type=Path, metavar="DIR", help="fake camera: serve these images (by name)"
    )
    run.add_argument(
        "--max-items", type=_positive_int, metavar="N", help="stop after N items (default: never)"
    )
    run.add_argument(
        "--events", type=Path, metavar="PATH", help="append each item's event as a JSON line"
    )
    run.add_argument(
        "--realtime",
        action="store_true",
        help="fake hardware: really wait the hold and cool-down times (default: simulated)",
    )
    run.add_argument(  # issue 16: fill levels
        "--fill-levels",
        type=Path,
        metavar="FILE",
        help='fake hardware: fill sensors read the levels in FILE (JSON, e.g. {"glass": 95}), '
        "re-read when it changes; default: empty bins",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file (and the model's labels)")
    _add_config(check)
    check.add_argument(
        "--print-default", action="store_true", help="print the bundled, commented config"
    )
    check.set_defaults(func=cmd_check_config)

    classify = sub.add_parser("classify", help="classify image files with the model")
    classify.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classify.add_argument(
        "--model", type=Path, metavar="PATH", help="model folder (default: the config's model)"
    )
    _add_config(classify)
    classify.add_argument("--json", action="store_true", help="print a JSON list, one per image")
    classify.add_argument(
        "--reference-kernels",
        action="store_true",
        help="TFLite's reference integer kernels instead of XNNPACK: slower, bit-exact across "
        "CPUs (for cross-architecture checks)",
    )
    _add_site_options(classify)
    classify.set_defaults(func=cmd_classify)

    lid = sub.add_parser("lid", help="move one bin's lid (calibration)")
    lid.add_argument("bin", metavar="BIN", help="bin name from the config")
    lid.add_argument(
        "position", metavar="open|close|ANGLE", help="open, close or an angle in degrees"
    )
    _add_config(lid)
    _add_hardware(lid)
    lid.set_defaults(func=cmd_lid)

    events = sub.add_parser("events", help="list sorted items from the event log")
    _add_config(events)
    events.add_argument(
        "--log", type=Path, metavar="PATH", help="event log file (default: the config's)"
    )
    events.add_argument(
        "--since", metavar="T", help="from this time: ISO (2026-11-24T08:00, UTC) or 30m, 2h, 1d"
    )
    events.add_argument(
        "--json", action="store_true", help="JSON lines, the records `run --events` writes"
    )
    events.set_defaults(func=cmd_events)

    sensor = sub.add_parser("sensor", help="print live proximity sensor readings (calibration)")
    _add_config(sensor)
    _add_hardware(sensor)
    sensor.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N readings (default: Ctrl-C)"
    )
    sensor.add_argument(
        "--interval-s", type=_positive_float, default=0.5, metavar="S", help="between readings"
    )
    sensor.add_argument(  # issue 16: calibrate a bin's fill sensor
        "--fill", metavar="BIN", help="read that bin's fill sensor instead (distance and percent)"
    )
    sensor.set_defaults(func=cmd_sensor)

    # --- commands that live in other modules, registered when they exist ----------------
    # bin_daemon/cli/model.py: `model install|rollback|status` (the Pi's model store);
    # bin_daemon/cli/ml.py: `train` and `evaluate` (the ML side); bin_daemon/cli/fleet.py:
    # `fleet watch` (MQTT); bin_daemon/cli/site.py: `site add|list|remove|export`. The CLI
    # works without them.
    for module_name in ("model", "ml", "fleet", "site"):
        module = _optional_module(f"bin_daemon.cli.{module_name}")
        if module is not None:
            module.add_parser(sub)
    # --------------------------------------------------------------------------------------
    return parser


def _add_site_options(parser: argparse.ArgumentParser) -> None:
    """--no-site and --state-dir (bin_daemon/cli/site.py), when site learning is there."""
    module = _optional_module("bin_daemon.cli.site")
    if module is not None:
        module.add_no_site(parser)


def _with_site(classifier: Any, config: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """The classifier with the site store applied (when it has examples), and what was applied."""
    module = _optional_module("bin_daemon.cli.site")
    if module is None:
        return classifier, None
    return module.with_site(classifier, config, state_dir=args.state_dir, no_site=args.no_site)


def _site_store_labels(config: Any) -> list[str]:
    """The labels the site store holds (bin_daemon/site/), for check-config; [] without one."""
    module = _optional_module("bin_daemon.site.store")
    if module is None or not config.site.enabled:
        return []
    return module.read_labels(config.site_store_path(for_cli=True))


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        return None


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bin_daemon.loop.service import RunOptions, run

    if args.hardware == "fake" and args.images is None:
        raise UsageError("run --hardware fake needs --images DIR")
    if args.hardware == "pi" and (
        args.images is not None or args.realtime or args.fill_levels is not None
    ):
        raise UsageError("--images, --realtime and --fill-levels go with --hardware fake")
    options = RunOptions(
        config_path=args.config,
        hardware=args.hardware,
        images=args.images,
        max_items=args.max_items,
        events_path=args.events,
        realtime=args.realtime,
        fill_levels=args.fill_levels,
    )
    return run(options)


def cmd_check_config(args: argparse.Namespace) -> int:
    from bin_daemon import config as config_module
    from bin_daemon.loop.service import load_classifier, make_policy

    if args.print_default:
        sys.stdout.write(config_module.default_config_text())
        return 0
    config = config_module.load_config(args.config)
    # The model as the daemon will load it: file, card, sha256, tensor shapes and types,
    # labels against the output. A bad one is one ModelError line here, before the start.
    classifier = load_classifier(config)
    notes = config.check_labels(classifier.labels, _site_store_labels(config))
    make_policy(config, classifier)  # an unsure threshold must come from somewhere
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sensor = config.sensor
    sensor_text = (
        f"IR on GPIO{sensor.gpio}"
        if sensor.type == "ir"
        else f"HC-SR04 (trigger GPIO{sensor.trigger_gpio}, echo GPIO{sensor.echo_gpio}, "
        f"< {sensor.trigger_distance_m} m)"
    )
    bins = ", ".join(f"{name} (GPIO{b.servo_gpio})" for name, b in config.bins.items())
    print(
        f"{config.source}: OK: sensor {sensor_text}; bins {bins}; fallback {config.fallback_bin}; "
        f"model {classifier.version} ({classifier.model_path})"
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from bin_daemon.config import load_config
    from bin_daemon.loop.service import load_classifier, unsure_threshold, with_model_options
    from bin_daemon.model.preprocess import load_image

    config = load_config(args.config)
    if args.model is not None:
        from bin_daemon.model.classifier import Classifier

        classifier = Classifier.load(
            args.model, num_threads=2, reference_kernels=args.reference_kernels
        )
        classifier = with_model_options(classifier, config)
    else:
        classifier = load_classifier(config, reference_kernels=args.reference_kernels)
    classifier, site_line = _with_site(classifier, config, args)
    if site_line is not None and not args.json:
        print(site_line)
    threshold = unsure_threshold(config, classifier) or 0.0
    results = []
    failed = 0
    for path in args.images:
        try:
            prediction = classifier.classify(load_image(path))
        except ImageError as error:
            failed += 1
            results.append({"image": str(path), "label": None, "error": str(error)})
            if not args.json:
                print(f"bin-daemon: error: {error}", file=sys.stderr)
            continue
        result = {
            "image": str(path),
            "label": prediction.label,
            "confidence": round(prediction.confidence, 4),
            "unsure": prediction.confidence < threshold,
            "top": [{"label": name, "score": round(score, 4)} for name, score in prediction.top],
        }
        if hasattr(prediction, "site"):  # the site store was applied
            result["site"] = prediction.site
            result["model_label"] = prediction.model_label
        results.append(result)
        if not args.json:
            others = ", ".join(f"{name} {score:.2f}" for name, score in prediction.top[1:])
            mark = "  (unsure)" if result["unsure"] else ""
            if result.get("site"):
                mark += f"  (site: the model said {prediction.model_label})"
            print(f"{path}: {prediction.label} {prediction.confidence:.2f}{mark}  [{others}]")
    if args.json:
        print(json.dumps(results, indent=1))
    return EXIT_ERROR if failed else 0


def cmd_events(args: argparse.Namespace) -> int:
    from bin_daemon.config import load_config
    from bin_daemon.records import eventlog

    if args.log is not None:
        path = args.log
    else:
        config = load_config(args.config)
        path = eventlog.path_to_read(config.event_log_path() if config.event_log.path else None)
    since = None
    if args.since is not None:
        try:
            since = eventlog.parse_since(args.since)
        except ValueError as error:
            raise UsageError(str(error)) from None
    count = unsure = 0
    for record in eventlog.read_events(path, since=since):
        unsure += bool(record.get("unsure"))
        if args.json:
            print(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        else:
            if count == 0:
                print(eventlog.TABLE_HEADER)
            print(eventlog.table_line(record))
        count += 1
    if not args.json:
        # The unsure share is the bin's one live sign of worse pictures (README, "Faults").
        share = f" ({100 * unsure / count:.0f}%)" if count else ""
        summary = f"{count} items, {unsure} unsure{share}"
        print(summary + (f" since {since}" if since else ""), file=sys.stderr)
    return 0


def cmd_lid(args: argparse.Namespace) -> int:
    from bin_daemon.config import load_config
    from bin_daemon.hardware import build_hardware
    from bin_daemon.hardware.clock import SystemClock
    from bin_daemon.hardware.fakes import FakeClock

    config = load_config(args.config)
    if args.bin not in config.bins:
        raise UsageError(f"no bin '{args.bin}' in {config.source} (bins: {', '.join(config.bins)})")
    bin_ = config.bins[args.bin]
    position = args.position.lower()
    if position not in ("open", "close"):
        try:
            angle = float(position)
        except ValueError:
            raise UsageError(
                f"position must be open, close or an angle, not {args.position!r}"
            ) from None
        low, high = sorted((bin_.min_angle_deg, bin_.max_angle_deg))
        if not low <= angle <= high:
            raise UsageError(f"angle {angle:g} is outside the servo's {low:g}..{high:g} degrees")
    clock = FakeClock() if args.hardware == "fake" else SystemClock()
    hardware = build_hardware(config, args.hardware, clock=clock, camera=False)
    try:
        lid = hardware.lids[args.bin]
        if position == "open":
            lid.open()
            angle = bin_.open_angle_deg
        elif position == "close":
            lid.close()
            angle = bin_.closed_angle_deg
        else:
            lid.move_to(angle)  # type: ignore[attr-defined]
        pulse = getattr(lid, "pin", None)
        duty = f", PWM duty {pulse.state:.4f}" if pulse is not None else ""
        clock.sleep(config.timing.lid_move_s)
        lid.detach()
        print(
            f"lid {args.bin}: moved to {angle:g} deg (GPIO{bin_.servo_gpio}{duty}), then detached"
        )
    finally:
        hardware.close()
    return 0


def cmd_sensor(args: argparse.Namespace) -> int:
    from bin_daemon.config import load_config
    from bin_daemon.hardware import build_hardware
    from bin_daemon.hardware.clock import SystemClock
    from bin_daemon.hardware.fakes import FakeClock

    config = load_config(args.config)
    fake = args.hardware == "fake"
    clock = FakeClock() if fake else SystemClock()
    count = args.count if args.count is not None else (5 if fake else None)
    fill_bin = args.fill
    if fill_bin is not None and (fill_bin not in config.bins or config.bins[fill_bin].fill is None):
        with_fill = [name for name, b in config.bins.items() if b.fill is not None]
        raise UsageError(
            f"bin '{fill_bin}' has no fill sensor (bins with one: {', '.join(with_fill) or 'none'})"
        )
    hardware = build_hardware(
        config, args.hardware, clock=clock, camera=False, lids=False, fill=fill_bin is not None
    )

    def reading() -> str:
        if fill_bin is None:
            return hardware.sensor.describe()
        from bin_daemon.hardware.fill import describe_fill

        return describe_fill(hardware.fill[fill_bin], config.bins[fill_bin].fill)

    try:
        n = 0
        start = clock.monotonic()
        while count is None or n < count:
            print(f"{clock.monotonic() - start:7.2f} s  {reading()}", flush=True)
            n += 1
            if count is None or n < count:
                clock.sleep(args.interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        hardware.close()
    return 0


# --- entry -------------------------------------------------------------------------------


class UsageError(BinDaemonError):
    """A wrong combination of arguments (exit status 2, like argparse)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        from bin_daemon.records.journal import setup_logging

        setup_logging("info")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as error:
        print(f"bin-daemon: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except BinDaemonError as error:
        print(f"bin-daemon: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
