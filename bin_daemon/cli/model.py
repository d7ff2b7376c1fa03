"""``bin-daemon model install FILE | rollback | status``: the model store from the shell;
``model keygen | sign | verify``: the fleet owner's model signatures (docs/FLEET.md)."""

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
        help="install, roll back or show the classifier model the daemon runs; sign models",
        description=(
            "Manage the model store (default /var/lib/bin-daemon/models, or "
            f"${STORE_ENV}). The daemon runs the store's 'current' model and switches on "
            "SIGHUP (systemctl reload bin-daemon). keygen, sign and verify are the fleet "
            "owner's model signatures (docs/FLEET.md)."
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
    install.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="the bin's config: if its model.trusted_keys has keys, the model must be signed "
        "by one of them (as a roll-out over MQTT must)",
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
    _add_signing(actions)
    model.set_defaults(func=run)
    return model


def _add_signing(actions: argparse._SubParsersAction) -> None:
    keygen = actions.add_parser(
        "keygen",
        help="make the fleet's signing key pair (on the owner's machine, never on a bin)",
        description="Writes an ed25519 private key (PEM, mode 0600) to FILE and its public key "
        "to FILE.pub, and prints the public key for the bins' model.trusted_keys.",
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="FILE", help="private key file")
    sign = actions.add_parser(
        "sign",
        help="sign a model folder (writes DIR/model.sig)",
        description="Signs the sha256 of the folder's model, labels.txt and model_card.json.",
    )
    sign.add_argument("dir", type=Path, metavar="DIR", help="the model folder")
    sign.add_argument("--key", type=Path, required=True, metavar="FILE", help="private key")
    verify = actions.add_parser(
        "verify", help="check a model folder's signature against public keys"
    )
    verify.add_argument("dir", type=Path, metavar="DIR", help="the model folder")
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument(
        "--key", type=Path, metavar="FILE", help="a public key file (FILE.pub from keygen)"
    )
    keys.add_argument(
        "--config", type=Path, metavar="PATH", help="a bin's config (its model.trusted_keys)"
    )


def _config_keys(path: Path) -> list[str]:
    from bin_daemon.config import load_config

    return list(load_config(path).model.trusted_keys)


def run_signing(args: argparse.Namespace) -> int:
    """``keygen``, ``sign`` and ``verify``."""
    from bin_daemon.model import signing
    from bin_daemon.model.store import verify_signature

    if args.model_command == "keygen":
        public = signing.generate_key(args.out)
        print(f"private key: {args.out} (keep it off the bins; back it up)")
        print(f"public key:  {args.out}.pub, id {signing.key_id(public)}")
        print("put this in each bin's /etc/bin-daemon/config.yaml:")
        print(f'model:\n  trusted_keys: ["{signing.public_key_text(public)}"]')
    elif args.model_command == "sign":
        key = signing.load_private_key(args.key)
        names = [p.name for p in model_files(args.dir)]
        target = signing.sign_folder(args.dir, names, key)
        print(f"signed {', '.join(names)} with key {signing.key_id(key.public_key())}: {target}")
    else:
        if args.key is not None:
            try:
                keys = [args.key.read_text(encoding="ascii").strip()]
            except (OSError, UnicodeDecodeError) as error:
                raise signing.SignatureError(f"{args.key}: cannot read ({error})") from None
        else:
            keys = _config_keys(args.config)
        print(f"{args.dir}: signed by key {verify_signature(args.dir, keys)}; files unchanged")
    return 0


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that a signature covers: the model, its card, labels."""
    from bin_daemon.model.store import locate

    if not folder.is_dir():
        raise BinDaemonError(f"{folder}: not a model folder")
    return list(locate(folder))


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
    if args.model_command in ("keygen", "sign", "verify"):
        return run_signing(args)
    store = ModelStore(args.store or default_store())
    if args.model_command == "install":
        keys = _config_keys(args.config) if args.config is not None else []
        result = store.install(args.file, trusted_keys=keys or None)
        if keys:
            print(f"signature checked against {args.config}'s model.trusted_keys")
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
