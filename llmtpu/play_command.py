"""`llmtpu play NAME|FILE`: print the plan, confirm, run a playbook, summarise."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from llmtpu.cli import UsageError

STATUS_STYLE = {"done": "green", "done earlier": "dim", "skipped": "dim", "planned": "cyan",
                "stopped": "yellow", "failed": "bold red"}


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llmtpu" / "play"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "play", help="run a named end-to-end flow (playbook)",
        description="Run a playbook: a built-in name (see --list) or the path of your own copy. "
                    "Prints the plan, asks, runs, and records progress so a rerun continues.")
    parser.add_argument("playbook", nargs="?", help="playbook name or path to a .toml file")
    parser.add_argument("--list", action="store_true", help="list the built-in playbooks")
    parser.add_argument("--root", default="/", metavar="DIR", help="run against this sysroot folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    parser.add_argument("--yes", action="store_true", help="apply without asking")
    parser.add_argument("--model", default=None, help="model to size memory and disk for")
    parser.add_argument("--state-dir", default=None, metavar="DIR", help="where progress is kept")
    parser.add_argument("--restart", action="store_true", help="forget earlier progress and start over")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import DEFAULT_MODEL, DoctorOptions, check_ids
    from llmtpu.playbook import PlaybookError, PlayRunner, PlayState, builtin_names, parse_playbook, read_playbook_text
    from llmtpu.provision.operation import ConfirmationRefused, OperationError, ask_to_apply
    from llmtpu.provision.registry import operation_for, operation_ids
    from llmtpu.target import LocalTarget

    if args.list:
        for name in builtin_names():
            text, source = read_playbook_text(name)
            book = parse_playbook(text, source, set(check_ids()), operation_ids())
            print(f"{name:22} {book.summary}")
        return 0
    if not args.playbook:
        raise UsageError("play: name a playbook (see `llmtpu play --list`) or give the path of a .toml file")
    if not os.path.isdir(args.root):
        raise UsageError(f"--root: {args.root} is not a folder; give the folder that holds the machine's files")
    try:
        text, source = read_playbook_text(args.playbook)
        book = parse_playbook(text, source, set(check_ids()), operation_ids())
    except PlaybookError as exc:
        raise UsageError(str(exc)) from exc
    target = LocalTarget(args.root)
    options = DoctorOptions(model=args.model or DEFAULT_MODEL)
    key = hashlib.sha256(f"{target.name}:{target.root}".encode()).hexdigest()[:12]
    state_file = Path(args.state_dir or default_state_dir()) / f"{book.name}-{target.name}-{key}.json"
    if args.restart and state_file.exists():
        state_file.unlink()

    def execute(dry_run: bool) -> list[Any]:
        state = PlayState.load(state_file)
        def build(op_id: str, op_args: dict[str, Any]) -> Any:
            return operation_for(op_id, target, op_args)

        return PlayRunner(book, target, state, options, build, dry_run=dry_run).run()

    try:
        planned = execute(dry_run=True)
        render(book.name, target.name, planned, "plan")
        if args.dry_run:
            return 0
        if any(o.status == "planned" for o in planned) and not ask_to_apply(args.yes):
            print("nothing applied", file=sys.stderr)
            return 1
        outcomes = execute(dry_run=False)
    except (PlaybookError, ConfirmationRefused) as exc:
        raise UsageError(str(exc)) from exc
    except OperationError as exc:
        print(f"llmtpu: play failed: {exc}", file=sys.stderr)
        return 2
    render(book.name, target.name, outcomes, "run")
    if any(o.status == "failed" for o in outcomes):
        return 2
    if any(o.status == "stopped" for o in outcomes):
        return 1
    return 0


def render(name: str, host: str, outcomes: list[Any], phase: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"{phase}: {name} on {host}")
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("details")
    for outcome in outcomes:
        table.add_row(outcome.step, Text(outcome.status, style=STATUS_STYLE.get(outcome.status, "")),
                      "\n".join(outcome.lines))
    console.print(table)
