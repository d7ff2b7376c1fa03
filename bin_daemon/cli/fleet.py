"""``bin-daemon fleet watch --broker HOST``: a live table of the bins reporting to a broker."""

from __future__ import annotations

import argparse
import sys
import threading
import time

from bin_daemon.errors import BinDaemonError

CLEAR = "\x1b[H\x1b[2J"
SETTLE_S = 1.0
"""--once: retained messages arrive right after subscribing; print after this long."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    fleet = subparsers.add_parser("fleet", help="watch the bins reporting to an MQTT broker")
    actions = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    watch = actions.add_parser(
        "watch", help="a live table: online, last item, counts, unsure rate, model, roll-out"
    )
    watch.add_argument("--broker", required=True, metavar="HOST", help="MQTT broker host")
    watch.add_argument("--port", type=int, default=None, help="default 1883, or 8883 with --tls")
    watch.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    watch.add_argument("--username", default=None, help="password: $BIN_DAEMON_MQTT_PASSWORD")
    how = watch.add_mutually_exclusive_group()
    how.add_argument("--once", action="store_true", help="print the table once and exit")
    how.add_argument("--seconds", type=float, default=None, metavar="N",
                     help="watch for N seconds, then exit (default: until Ctrl-C)")  # fmt: skip
    watch.add_argument("--interval-s", type=float, default=1.0, help="redraw every S seconds")
    fleet.set_defaults(func=run)
    return fleet


def run(args: argparse.Namespace) -> int:
    from bin_daemon.telemetry.credentials import mqtt_password
    from bin_daemon.telemetry.fleetview import FleetView
    from bin_daemon.telemetry.mqtt import BrokerSettings, MqttLink
    from bin_daemon.telemetry.topics import WATCH_TOPICS

    view = FleetView()
    lock = threading.Lock()
    connected = threading.Event()
    refused: list[str] = []

    def on_message(topic: str, payload: bytes) -> None:
        with lock:
            view.update(topic, payload)

    def on_refused(reason: str) -> None:
        refused.append(reason)
        connected.set()

    port = args.port or (8883 if args.tls else 1883)
    link: MqttLink

    def on_connect() -> None:
        link.subscribe(WATCH_TOPICS)
        connected.set()

    settings = BrokerSettings(host=args.broker, port=port, tls=args.tls, username=args.username,
                              password=mqtt_password() if args.username else None)  # fmt: skip
    link = MqttLink(
        settings,
        on_connect=on_connect,
        on_refused=on_refused,
        on_connect_fail=lambda: on_refused("cannot connect"),
        on_message=on_message,
    )
    link.start()
    try:
        if not connected.wait(10) or refused:
            why = refused[0] if refused else "no connection within 10 s"
            raise BinDaemonError(f"MQTT broker {args.broker}:{port}: {why}")
        if args.once:
            time.sleep(SETTLE_S)
            with lock:
                print(view.render())
            return 0
        end = time.monotonic() + args.seconds if args.seconds is not None else None
        live = sys.stdout.isatty()
        while end is None or time.monotonic() < end:
            time.sleep(
                args.interval_s
                if end is None
                else min(args.interval_s, max(0.0, end - time.monotonic()))
            )
            with lock:
                table = view.render()
            print((CLEAR if live else "") + table + ("" if live else "\n"), flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        link.stop()
