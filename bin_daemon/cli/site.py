"""``bin-daemon site add|list|remove|export``: teach the bin its own site.

The store is the daemon's: ``--state-dir DIR`` (``DIR/site.sqlite3``), else the config's
``site.path``, else ``$STATE_DIRECTORY``, else (outside systemd) the installed service's
``/var/lib/bin-daemon`` when it exists, else ``~/.local/state/bin-daemon``. Every command
prints which store it used. ``site add`` checks every image (or spooled item) before it
writes any: a bad one is one line and nothing is added.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from bin_daemon.errors import BinDaemonError

EXIT_ERROR = 1


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the daemon's state folder (default: $STATE_DIRECTORY, else the installed "
        "service's /var/lib/bin-daemon, else ~/.local/state/bin-daemon)",
    )


def add_no_site(parser: argparse.ArgumentParser) -> None:
    add_state_dir(parser)
    parser.add_argument(
        "--no-site", action="store_true", help="the model alone, without the site store"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    site = sub.add_parser(
        "site",
        help="teach the bin its own site: labelled frames that adapt the model",
        description="Labelled examples from this bin's site (image files or spooled frames) "
        "adapt the model and can add new labels. The running daemon picks up changes "
        "between items.",
    )
    actions = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add labelled examples (image files or spooled items)")
    add.add_argument("--label", required=True, help="the label, e.g. paper or coffee_cup")
    add.add_argument(
        "--item",
        action="store_true",
        help="the arguments are item ids of spooled frames (bin-daemon events), not files",
    )
    add.add_argument("sources", nargs="+", metavar="IMAGE|ITEM_ID")
    add.set_defaults(func=cmd_add)

    listing = actions.add_parser("list", help="examples per label")
    listing.add_argument(
        "--examples", action="store_true", help="one line per example (its id, for remove)"
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=cmd_list)

    remove = actions.add_parser("remove", help="remove every example of a label, or one by id")
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", help="remove all examples of this label")
    which.add_argument(
        "--id", type=int, metavar="N", help="remove example N (site list --examples)"
    )
    remove.set_defaults(func=cmd_remove)

    export = actions.add_parser(
        "export", help="write the examples as class folders of JPEGs (for train --data)"
    )
    export.add_argument("dir", type=Path, metavar="DIR")
    export.set_defaults(func=cmd_export)

    for action in (add, listing, remove, export):
        action.add_argument("--config", type=Path, metavar="PATH", help="config file")
        add_state_dir(action)


# --- where things are ----------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any:
    from bin_daemon.config import load_config

    return load_config(getattr(args, "config", None))


def store_path(config: Any, state_dir: Path | None) -> Path:
    from bin_daemon.site.store import FILE_NAME

    if state_dir is not None:
        return state_dir / FILE_NAME
    return config.site_store_path(for_cli=True)


def spool_dir(config: Any, state_dir: Path | None) -> Path:
    from bin_daemon.site.store import state_dir as default_state_dir

    if config.spool.dir is not None:
        return config.spool_dir()
    return (state_dir or default_state_dir(for_cli=True)) / "spool"


def open_store(config: Any, state_dir: Path | None) -> Any:
    from bin_daemon.site.store import SiteStore

    store = SiteStore(store_path(config, state_dir), quota_mb=config.site.quota_mb)
    _give_to_folder_owner(store.path)
    return store


def _give_to_folder_owner(path: Path) -> None:
    """Run as root (sudo) on the service's folder: the store's files keep belonging to the
    folder's owner (the bin-daemon user), so the daemon can still write them."""
    if os.geteuid() != 0:
        return
    folder = path.parent.stat()
    if folder.st_uid == 0:
        return
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        target = path.parent / name
        with contextlib.suppress(FileNotFoundError):
            if target.stat().st_uid != folder.st_uid:
                os.chown(target, folder.st_uid, folder.st_gid)


def with_site(
    classifier: Any, config: Any, *, state_dir: Path | None, no_site: bool
) -> tuple[Any, str]:
    """For ``classify`` and ``evaluate``: the classifier with the site store applied when it
    has examples (and not ``no_site``), and one line saying what was applied."""
    from bin_daemon.site.runtime import SiteClassifier
    from bin_daemon.site.store import SiteStore

    if no_site:
        return classifier, "site store: off (--no-site)"
    if not config.site.enabled:
        return classifier, "site store: off (site.enabled: false)"
    path = store_path(config, state_dir)
    if not path.is_file():
        return classifier, f"site store: none at {path} (the model alone)"
    site = SiteClassifier(classifier, SiteStore(path, quota_mb=config.site.quota_mb), persist=False)
    site.refresh(force=True)
    line = site.describe().replace("site store ", "site store: ", 1)
    if site.head is None:
        return classifier, line
    return site, line + "; --no-site for the model alone"


# --- commands ------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    from bin_daemon.loop.service import load_classifier
    from bin_daemon.records.spool import ITEM_ID_PATTERN, Spool
    from bin_daemon.site.store import check_label
    from bin_daemon.site.teach import add_prepared, prepare

    label = check_label(args.label)
    config = _config(args)
    inputs: list[tuple[Path, str | None]] = []
    problems: list[str] = []
    if args.item:
        spool = Spool(spool_dir(config, args.state_dir), save="none")
        for item_id in args.sources:
            frame = spool.frame_path(item_id)
            if not ITEM_ID_PATTERN.fullmatch(item_id):
                problems.append(
                    f"item {item_id!r}: not an item id (like 20261124T081500123Z-a1b2c3-0042, "
                    "from `bin-daemon events`)"
                )
            elif frame is None:
                problems.append(
                    f"item {item_id!r}: no spooled frame in {spool.directory} (an item id from "
                    "`bin-daemon events`, whose frame the spool kept)"
                )
            else:
                inputs.append((frame, item_id))
    else:
        inputs = [(Path(source), None) for source in args.sources]
    _refuse(problems)
    classifier = load_classifier(config)
    prepared = []
    for path, item_id in inputs:
        try:
            prepared.append(prepare(classifier, path, item_id=item_id))
        except BinDaemonError as error:
            problems.append(str(error))
    _refuse(problems)
    with open_store(config, args.state_dir) as store:
        for example in prepared:
            new_id = add_prepared(store, classifier, label, example)
            print(f"added #{new_id} {label}: {example.source}")
        total = store.counts().get(label, 0)
        print(
            f"{store.path}: {total} examples of {label}; the daemon applies them before its next item"
        )
    return 0


def _refuse(problems: list[str]) -> None:
    """One line per bad input on stderr, then the error: nothing was written."""
    if not problems:
        return
    for problem in problems[:-1]:
        print(f"bin-daemon: error: {problem}", file=sys.stderr)
    raise BinDaemonError(f"{problems[-1]}; nothing added")


def cmd_list(args: argparse.Namespace) -> int:
    config = _config(args)
    path = store_path(config, args.state_dir)
    if not path.is_file():
        if args.json:
            print(json.dumps({"store": str(path), "labels": {}, "examples": 0}))
        else:
            print(f"{path}: no site store yet (bin-daemon site add creates it)")
        return 0
    model_labels = _model_labels(config)
    with open_store(config, args.state_dir) as store:
        counts = store.counts()
        examples = store.examples() if args.examples or args.json else []
        used = store.used_bytes()
        quota = store.quota_bytes
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(path),
                    "labels": counts,
                    "site_only_labels": [k for k in counts if k not in model_labels],
                    "examples": sum(counts.values()),
                    "bytes": used,
                    "quota_bytes": quota,
                    "items": [
                        {
                            "id": e.id,
                            "label": e.label,
                            "source": e.source,
                            "added_at": e.added_at,
                            "model_sha256": e.model_sha256,
                            "jpeg_bytes": e.jpeg_bytes,
                        }
                        for e in examples
                    ],
                },
                indent=1,
            )
        )
        return 0
    print(
        f"{path}: {sum(counts.values())} examples, {used / 1e6:.1f} MB of {quota / 1024 / 1024:g} MB"
    )
    for label, n in counts.items():
        note = "" if label in model_labels else "  (new: not a model label)"
        print(f"  {label:<16} {n:>5}{note}")
    for e in examples:
        print(f"#{e.id:<6} {e.label:<16} {e.added_at}  {e.source}")
    return 0


def _model_labels(config: Any) -> list[str]:
    """The configured model's labels from its card (no interpreter needed)."""
    from bin_daemon.model.classifier import CARD_FILE, read_card
    from bin_daemon.paths import shipped_models_dir

    try:
        card = read_card((config.model_dir() or shipped_models_dir()) / CARD_FILE)
    except BinDaemonError:
        return []
    return list(card.get("labels") or [])


def cmd_remove(args: argparse.Namespace) -> int:
    config = _config(args)
    path = store_path(config, args.state_dir)
    if not path.is_file():
        raise BinDaemonError(f"{path}: no site store (nothing to remove)")
    with open_store(config, args.state_dir) as store:
        if args.id is not None:
            if not store.remove_id(args.id):
                raise BinDaemonError(f"{path}: no example #{args.id} (see site list --examples)")
            print(f"removed example #{args.id}")
        else:
            removed = store.remove_label(args.label)
            if not removed:
                raise BinDaemonError(f"{path}: no examples of {args.label!r} (see site list)")
            print(f"removed {removed} examples of {args.label}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    config = _config(args)
    path = store_path(config, args.state_dir)
    if not path.is_file():
        raise BinDaemonError(f"{path}: no site store (nothing to export)")
    written = 0
    labels: set[str] = set()
    with open_store(config, args.state_dir) as store:
        for example_id, label, jpeg in store.jpegs():
            folder = args.dir / label
            try:
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"site-{example_id:06d}.jpg"
                partial = target.with_suffix(".jpg.part")
                partial.write_bytes(jpeg)
                partial.replace(target)
            except OSError as error:
                raise BinDaemonError(
                    f"{args.dir}: cannot write ({error.strerror or error}); {written} written"
                ) from None
            written += 1
            labels.add(label)
    print(
        f"wrote {written} JPEGs in {len(labels)} class folders under {args.dir} "
        f"(bin-daemon train --data can fold them into a retrain)"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run as: bin-daemon site ...")
