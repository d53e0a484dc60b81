"""`llmtpu fetch`, `llmtpu mirror`, `llmtpu debs`, `llmtpu undo`: argument parsing and wiring.

The work is in fetch.py, mirror.py, debs.py and undo.py; this file only turns arguments into
calls, errors into one line and exit codes, and progress into a rich bar (on stderr, so the
placed paths on stdout stay clean for scripts).

`debs` and `undo` exit (llmtpu.clikit.Exit) 0 done (or nothing to do), 2 failed (a failed
apply is rolled back) or applied but verify found problems, 64 refused input or not confirmed
(an unreadable or wrong-architecture deb, a root its scripts cannot run inside, no terminal and
no --yes), 130 interrupted (the running dpkg step finished; the message gives the way back).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from llmtpu.clikit import Exit, local_root
from llmtpu.provision.registry import add_debs_source_arguments


def add_parser(commands: Any) -> None:
    fetch_parser = commands.add_parser(
        "fetch", help="download Sophgo's debs or sdcard.tgz (dfss or a mirror), verified",
        description="Download Sophgo's files with dfss, or from a mirror made by `llmtpu mirror create` "
                    "(http(s)://, file://, sftp://) with resume and sha256 checks. Prints the placed paths.")
    fetch_parser.add_argument("what", choices=["driver", "libsophon", "libsophon-dev", "debs", "sdcard"])
    fetch_parser.add_argument("--version", "--deb-version", dest="version",
                              help="deb release (default: sources.toml's default)")
    fetch_parser.add_argument("--mirror", metavar="URL", help="mirror to use instead of Sophgo's dfss")
    fetch_parser.add_argument("--dest", default=".", metavar="DIR", help="folder to place the files in (default .)")
    fetch_parser.add_argument("--known-hosts", metavar="FILE",
                              help="for sftp://: known_hosts file (default ~/.ssh/known_hosts)")
    fetch_parser.set_defaults(run=run_fetch)

    mirror_parser = commands.add_parser(
        "mirror", help="make a folder servable as an offline mirror",
        description="Write llmtpu-mirror.json (name, size, sha256 of every file) so any static web server, "
                    "a file:// path or an SFTP server can act as a mirror for `llmtpu fetch --mirror`.")
    mirror_actions = mirror_parser.add_subparsers(dest="mirror_action", metavar="ACTION", required=True)
    create = mirror_actions.add_parser("create", help="hash the files in DIR and write its manifest")
    create.add_argument("folder", metavar="DIR")
    create.set_defaults(run=run_mirror_create)

    debs_parser = commands.add_parser(
        "debs", help="install the sophon debs with dpkg: plan, apply, verify",
        description="Install sophon-driver, sophon-libsophon, sophon-libsophon-dev with dpkg, on this machine "
                    "or a sysroot (--root), from a folder of .debs (--debs), a mirror (--mirror) or Sophgo's "
                    "dfss (the default; fetched only after you agreed to the plan). `plan` only reads; `apply` "
                    "shows the plan, asks, applies, verifies; `llmtpu undo` reverts.")
    debs_parser.add_argument("action", choices=["plan", "apply"])
    debs_parser.add_argument("--root", default="/", metavar="DIR", help="install into this sysroot instead of /")
    debs_parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    debs_parser.add_argument("--yes", action="store_true", help="apply without asking")
    add_debs_source_arguments(debs_parser)
    debs_parser.set_defaults(run=run_debs)

    undo_parser = commands.add_parser(
        "undo", help="revert the newest change llmtpu recorded on the machine",
        description="Read the newest record of the machine's journal (/var/lib/llmtpu/journal) and revert it.")
    undo_parser.add_argument("--root", default="/", metavar="DIR", help="undo in this sysroot instead of /")
    undo_parser.add_argument("--dry-run", action="store_true", help="print what would be undone only")
    undo_parser.add_argument("--yes", action="store_true", help="undo without asking")
    undo_parser.set_defaults(run=run_undo)


class RichReporter:
    """A rich progress bar per file on stderr (bytes, speed, time left)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.task: Any = None

    def begin(self, name: str, total: int | None, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=done)

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)

    def end(self) -> None:
        self.progress.stop()


def _fail(message: str) -> int:
    print(f"llmtpu: error: {message}", file=sys.stderr)
    return Exit.FAILED


def run_fetch(args: argparse.Namespace) -> int:
    from llmtpu.provision import fetch

    try:
        wanted = fetch.artifacts(args.what, args.version)
        source: fetch.DfssSource | fetch.MirrorSource
        if args.mirror:
            transport = (fetch.SftpTransport(args.mirror, args.known_hosts) if args.mirror.startswith("sftp://")
                         else None)
            source = fetch.MirrorSource(args.mirror, transport)
        else:
            source = fetch.DfssSource()
        placed = fetch.fetch(wanted, source, args.dest, RichReporter())
    except fetch.FetchError as exc:
        return _fail(str(exc))
    for path in placed:
        print(path)
    return 0


def run_mirror_create(args: argparse.Namespace) -> int:
    from llmtpu.provision.mirror import MANIFEST_NAME, MirrorError, create_manifest

    try:
        files = create_manifest(args.folder)
    except MirrorError as exc:
        return _fail(str(exc))
    total = sum(f.size for f in files)
    print(f"{os.path.join(args.folder, MANIFEST_NAME)}: {len(files)} file(s), {total} bytes")
    return 0


def run_debs(args: argparse.Namespace) -> int:
    from llmtpu.provision import debs, registry
    from llmtpu.provision.operation import ConfirmationRefused, Journal, OperationError, confirm
    from llmtpu.target import LocalTarget, TargetError

    target = LocalTarget(local_root(args.root))
    sources = registry.debs_source_from_args(args)
    try:
        operation = registry.operation_for("debs.install", target, sources.as_args())
        assert operation is not None  # the registry always has debs.install
        plan = operation.plan(target)
        print("\n".join(plan.lines(target.root)))
        if args.action == "plan" or args.dry_run or plan.nothing_to_do:
            return 0
        if plan.needs_root and os.geteuid() != 0:
            return _fail("installing debs on this machine needs root: run the same command with sudo")
        if not confirm([plan], args.yes):
            print("not applied")
            return Exit.USAGE
        operation.apply(target, plan, Journal(target))
        problems = operation.verify(target)
    except debs.ApplyInterrupted as exc:
        print(f"llmtpu: {exc}", file=sys.stderr)
        return Exit.INTERRUPTED
    except (debs.RefusedInput, ConfirmationRefused) as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.USAGE
    except OperationError as exc:
        return _fail(str(exc))
    except (TargetError, OSError) as exc:  # a refused or failed file access: one line, not a traceback
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"verify: {problem}")
    print("verified" if not problems else f"{len(problems)} problem(s) left")
    return 0 if not problems else 2


def run_undo(args: argparse.Namespace) -> int:
    from llmtpu.provision import undo
    from llmtpu.provision.debs import RefusedInput, deferred_interrupts
    from llmtpu.provision.operation import OperationError, confirm
    from llmtpu.target import LocalTarget, TargetError

    target = LocalTarget(local_root(args.root))
    try:
        entry = undo.newest(target)
        plan = undo.plan_undo(target, entry)
        print(f"undo {entry.operation} applied {entry.started} ({entry.path})")
        print("\n".join(plan.lines(target.root)))
        if args.dry_run:
            return 0
        if plan.needs_root and os.geteuid() != 0:
            return _fail("undoing this needs root: run the same command with sudo")
        if not confirm([plan], args.yes):
            print("not undone")
            return Exit.USAGE
        # an undo stopped between its dpkg steps could not be run again (its own changes would look
        # like someone else's): an interrupt waits for the end
        with deferred_interrupts() as caught:
            undo.undo(target, entry)
        if caught:
            print("llmtpu: an interrupt arrived during the undo; it was finished first, nothing is left half-way",
                  file=sys.stderr)
    except OperationError as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.USAGE if isinstance(exc, RefusedInput) else Exit.FAILED
    except (TargetError, OSError) as exc:  # a refused or failed file access: one line, not a traceback
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return 2
    print("undone")
    return 0
