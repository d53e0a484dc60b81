"""`llmtpu push` and `llmtpu rollback`: argument parsing and rendering; the work is in push.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from llmtpu.clikit import UsageError

SCHEMA = "llmtpu.push/1"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    from llmtpu.provision.push import DEFAULT_DEST

    parser.add_argument("--hosts", metavar="HOST[:PORT],...", help="boards to work on")
    parser.add_argument("--inventory", "-i", metavar="FILE",
                        help="Ansible-style inventory (INI or YAML): hosts, ansible_port/user, key file, root=")
    parser.add_argument("--limit", "-l", metavar="PATTERN", help="only inventory hosts matching this pattern")
    parser.add_argument("--user", help="SSH login on the boards (default: ssh's own default)")
    parser.add_argument("--identity", metavar="KEY", help="private key file for SSH")
    parser.add_argument("--known-hosts", metavar="FILE",
                        help="known_hosts file with the boards' keys (default: ~/.ssh/known_hosts); "
                             "unknown or changed keys are always refused")
    parser.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config to use (e.g. /dev/null)")
    parser.add_argument("--dest", default=DEFAULT_DEST, metavar="DIR",
                        help=f"deployment folder on the boards (default {DEFAULT_DEST}; current -> the live release)")
    parser.add_argument("--board-root", default="", metavar="DIR",
                        help="prefix for every path on the boards (sysroots and tests)")
    parser.add_argument("--parallel", type=int, default=8, metavar="N", help="boards worked on at once (default 8)")
    parser.add_argument("--timeout", type=float, default=60, metavar="SECONDS",
                        help="how long a board may take to answer each step, plus time for the bytes it moves "
                             "(default 60); a board past it fails with 'timed out', the others go on")
    parser.add_argument("--json", action="store_true", help=f"print one JSON document (schema {SCHEMA})")


def add_parser(commands: Any) -> None:
    push = commands.add_parser(
        "push", help="copy a bundle to boards: resumable, verified on the board, switched atomically",
        description="Push a bundle from `llmtpu bundle create` to boards over SSH. Exit 0 when every board "
                    "runs the bundle, 2 when a board failed, 64 usage or a tampered bundle, 130 when "
                    "interrupted (SIGINT/SIGTERM) before every board was done; a rerun resumes.",
    )
    push.add_argument("bundle", metavar="BUNDLE", type=Path, help="bundle folder")
    add_connection_arguments(push)
    push.add_argument("--checksum", action="store_true",
                      help="hash every file on the boards even when the quick size/mtime check passes")
    push.set_defaults(run=run_push)
    rollback = commands.add_parser(
        "rollback", help="switch boards back to their previous deployment",
        description="Swap the current and previous deployments on each board (atomic symlink flip).",
    )
    add_connection_arguments(rollback)
    rollback.set_defaults(run=run_rollback)


def boards_from(args: argparse.Namespace) -> list[Any]:
    from llmtpu.provision.push import Board, parse_hosts

    if args.parallel < 1:
        raise UsageError(f"--parallel {args.parallel}: give 1 or more")
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout}: give a number of seconds above 0")
    if not args.dest.startswith("/"):
        raise UsageError(f"--dest {args.dest!r}: must be an absolute path on the boards")
    for option, value in (("--identity", args.identity), ("--known-hosts", args.known_hosts)):
        if value and not os.path.isfile(value):
            raise UsageError(f"{option} {value}: no such file")
    template = Board("", user=args.user, identity=args.identity, known_hosts=args.known_hosts,
                     ssh_config=args.ssh_config, root=args.board_root)
    if args.inventory:
        return boards_from_inventory(args, template)
    if args.limit:
        raise UsageError("--limit selects hosts of --inventory; give one")
    if not args.hosts:
        raise UsageError("name the boards: --hosts HOST[:PORT],... or --inventory FILE")
    try:
        return parse_hosts(args.hosts, template)
    except ValueError as exc:
        raise UsageError(f"--hosts: {exc}; give HOST[:PORT],HOST[:PORT],...") from exc


def boards_from_inventory(args: argparse.Namespace, template: Any) -> list[Any]:
    """The fleet's host specs as push boards (OpenSSH checks keys against the same files)."""
    from dataclasses import replace

    from llmtpu.hostkeys import HostKeyStore
    from llmtpu.hosts_command import resolve_specs

    known = args.known_hosts or " ".join(str(p) for p in HostKeyStore().files if p.exists()) or None
    boards = []
    for spec in resolve_specs(args, args.hosts, args.limit):
        for what, value in (("ansible_host", spec.hostname), ("ansible_user", spec.user or "")):
            if value.startswith("-"):
                raise UsageError(f"{spec.name}: {what} {value!r} starts with '-', which ssh would read as an "
                                 "option; fix the inventory")
        if spec.jump:
            raise UsageError(f"{spec.name}: push does not go through ProxyJump hosts yet; push from the jump host")
        boards.append(replace(template, host=spec.hostname, port=spec.port, user=spec.user or template.user,
                              identity=spec.identity_files[0] if spec.identity_files else template.identity,
                              known_hosts=known, root=spec.root.rstrip("/") or template.root))
    return boards


class RichProgress:
    """One bar per board and one overall, on stderr (rich's Progress is thread-safe)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.overall = progress.add_task("[bold]all boards", total=0, phase="")

    def task(self, board: str) -> Any:
        if board not in self.tasks:
            self.tasks[board] = self.progress.add_task(board, total=None, phase="")
        return self.tasks[board]

    def begin(self, board: str, total: int) -> None:
        self.progress.update(self.task(board), total=total, completed=0)
        overall = self.progress.tasks[self.overall]
        self.progress.update(self.overall, total=(overall.total or 0) + total)

    def advance(self, board: str, nbytes: int) -> None:
        self.progress.advance(self.task(board), nbytes)
        self.progress.advance(self.overall, nbytes)

    def phase(self, board: str, text: str) -> None:
        self.progress.update(self.task(board), phase=text)


def announce(result: Any) -> None:
    """One line on stderr per board as soon as it is done, so a slow board never hides the others."""
    print(f"{result.board}: {result.status} {result.release or result.message}".rstrip(), file=sys.stderr,
          flush=True)


def finish(results: list[Any], ok: bool) -> int:
    """0 ok, 2 a board failed, 130 when an interrupt stopped a board before it was done."""
    if any(r.status == "interrupted" for r in results):
        print("llmtpu: interrupted; run the same command again to finish (boards resume where they stopped)",
              file=sys.stderr)
        return 130
    return 0 if ok else 2


def run_push(args: argparse.Namespace) -> int:
    from llmtpu.provision.bundle import BundleError
    from llmtpu.provision.push import cancel_on_signals, push_fleet, verified_manifest

    boards = boards_from(args)
    if not args.bundle.is_dir():
        raise UsageError(f"{args.bundle}: not a bundle folder; build one with `llmtpu bundle create`")
    try:
        manifest = verified_manifest(args.bundle)
        with cancel_on_signals() as cancel:
            if args.json:
                results = push_fleet(args.bundle, boards, args.dest, args.parallel, None, args.checksum, args.timeout,
                                     cancel, announce)
            else:
                from rich.console import Console
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

                with Progress(TextColumn("{task.description:>22}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TextColumn("{task.fields[phase]}"),
                              console=Console(stderr=True)) as bars:
                    results = push_fleet(args.bundle, boards, args.dest, args.parallel, RichProgress(bars),
                                         args.checksum, args.timeout, cancel,
                                         lambda r: bars.console.print(f"{r.board}: {r.status} {r.release or r.message}",
                                                                      markup=False, highlight=False))
    except BundleError as exc:
        raise UsageError(f"refused before sending anything: {exc}") from exc
    ok = all(r.status in ("deployed", "unchanged") for r in results)
    if args.json:
        json.dump({"schema": SCHEMA, "bundle": str(args.bundle), "digest": manifest.digest, "dest": args.dest,
                   "ok": ok, "boards": [r.to_dict() for r in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(results, manifest.digest)
    return finish(results, ok)


def run_rollback(args: argparse.Namespace) -> int:
    from llmtpu.provision.push import cancel_on_signals, rollback_fleet

    boards = boards_from(args)
    with cancel_on_signals() as cancel:
        results = rollback_fleet(boards, args.dest, args.parallel, args.timeout, cancel, announce)
    ok = all(r.status == "rolled-back" for r in results)
    if args.json:
        json.dump({"schema": SCHEMA, "dest": args.dest, "ok": ok, "boards": [r.to_dict() for r in results]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(results, None)
    return finish(results, ok)


def render_table(results: list[Any], digest: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bundle {digest[:20]}" if digest else None)
    for column in ("board", "status", "release", "sent MiB", "sent/resumed/linked", "verify s", "total s", "note"):
        table.add_column(column)
    for r in results:
        style = "red" if r.status in ("failed", "interrupted") else "green"
        table.add_row(r.board, f"[{style}]{r.status}[/]", r.release, f"{r.bytes_sent / 2**20:.1f}",
                      f"{r.files_sent}/{r.files_resumed}/{r.files_linked}", f"{r.verify_seconds:.2f}",
                      f"{r.seconds:.2f}", r.message)
    Console().print(table)
