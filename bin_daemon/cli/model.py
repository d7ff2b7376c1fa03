"""``bin-daemon model install FILE | rollback | status``: the model store from the shell."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bin_daemon.errors import BinDaemonError
from bin_daemon.model.store import (
    DEFAULT_STORE,
    STORE_ENV,
    InstallResult,
    ModelStore,
    default_store,
)

SERVICE = "bin-daemon.service"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``model`` and its three subcommands on the main CLI's subparsers."""
    model = subparsers.add_parser(
        "model",
        help="install, roll back or show the classifier model the daemon runs",
        description=(
            "Manage the model store (default /var/lib/bin-daemon/models, or "
            f"${STORE_ENV}). The daemon runs the store's 'current' model and switches on "
            "SIGHUP (systemctl reload bin-daemon)."
        ),
    )
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    store_help = f"model store folder (default: ${STORE_ENV} or {DEFAULT_STORE})"

    install = actions.add_parser(
        "install",
        help="check, self-test and switch to a new model; the old one is kept as previous",
    )
    install.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="a .tflite with model_card.json and labels.txt beside it, or a folder of the three",
    )
    rollback = actions.add_parser("rollback", help="switch back to the previous model")
    status = actions.add_parser("status", help="show the current and previous model")
    for sub in (install, rollback, status):
        sub.add_argument("--store", type=Path, default=None, help=store_help)
        sub.add_argument(
            "--no-reload",
            action="store_true",
            help=argparse.SUPPRESS if sub is status else "do not ask the running daemon to reload",
        )
    model.set_defaults(func=run)
    return model


def reload_daemon(store: Path) -> str:
    """Ask the systemd service to pick up the store's new ``current``; say what happened."""
    hint = "a daemon started by hand switches on SIGHUP (kill -HUP <pid>) or at its next start"
    if store.resolve() != DEFAULT_STORE.resolve():
        return f"not the service's store, so bin-daemon.service was not reloaded; {hint}"
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return f"no systemctl here; {hint}"
    active = subprocess.run([systemctl, "is-active", "--quiet", SERVICE], check=False)
    if active.returncode != 0:
        return f"{SERVICE} is not running; it loads the new model when it starts"
    done = subprocess.run(
        [systemctl, "reload", SERVICE], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exit status {done.returncode}"
        return f"could not reload {SERVICE} ({reason}); run: sudo systemctl reload bin-daemon"
    return f"{SERVICE} reloaded: it finishes the item in hand, then uses the new model"


def _print_install(result: InstallResult) -> None:
    entry = result.entry
    if result.already_current:
        print(f"model {entry.version} ({entry.sha256[:12]}) is already current; nothing to do")
        return
    if result.self_test is not None:
        test = result.self_test
        print(f"self-test passed: {test.correct}/{test.total} golden images right")
        for miss in test.misses:
            print(f"  missed {miss}")
    print(f"current: version {entry.version}, sha256 {entry.sha256[:12]} ({entry.path})")
    if result.previous is not None:
        print(f"previous: version {result.previous.version} (undo: bin-daemon model rollback)")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``model`` command; raises :class:`BinDaemonError` on failure."""
    store = ModelStore(args.store or default_store())
    if args.model_command == "install":
        result = store.install(args.file)
        _print_install(result)
        if not result.already_current and not args.no_reload:
            print(reload_daemon(store.root))
    elif args.model_command == "rollback":
        entry = store.rollback()
        print(f"rolled back: current is version {entry.version} ({entry.sha256[:12]})")
        if not args.no_reload:
            print(reload_daemon(store.root))
    else:
        print("\n".join(store.status_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m bin_daemon.cli.model``), same commands as the CLI."""
    parser = argparse.ArgumentParser(prog="bin-daemon")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BinDaemonError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
