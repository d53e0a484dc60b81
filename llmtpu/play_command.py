"""`llmtpu play NAME|FILE`: print the plan, confirm, run a playbook, summarise; one machine or many."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtpu.clikit import UsageError, local_root, refuse_root_with_hosts

STATUS_STYLE = {"done": "green", "in place": "green", "done earlier": "dim", "skipped": "dim", "planned": "cyan",
                "stopped": "yellow", "failed": "bold red"}


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llmtpu" / "play"


def add_parser(commands: Any) -> None:
    from llmtpu.hosts_command import add_fleet_arguments

    parser = commands.add_parser(
        "play", help="run a named end-to-end flow (playbook)",
        description="Run a playbook: a built-in name (see --list) or the path of your own copy. "
                    "Prints the plan, asks, runs. A rerun re-reads the machine and redoes only what "
                    "is no longer in place; a stop for a manual step continues after it.")
    parser.add_argument("playbook", nargs="?", help="playbook name or path to a .toml file")
    parser.add_argument("--list", action="store_true", help="list the built-in playbooks")
    parser.add_argument("--root", default="/", metavar="DIR", help="run against this sysroot folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    parser.add_argument("--yes", action="store_true", help="apply without asking")
    parser.add_argument("--model", default=None, help="model to size memory and disk for")
    parser.add_argument("--state-dir", default=None, metavar="DIR", help="where progress is kept")
    parser.add_argument("--restart", action="store_true", help="forget earlier progress and start over")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="variables",
                        help="fill {NAME} in the playbook's steps (e.g. --set bundle=./airbox-bundle)")
    from llmtpu.provision.registry import add_debs_source_arguments

    add_debs_source_arguments(parser.add_argument_group("where fix steps get the sophon debs (default: dfss)"))
    smoke = parser.add_argument_group("inference smoke test (steps with smoke = true, clock-search)")
    smoke.add_argument("--engine", metavar="PATH", help="engine binary on the machine")
    smoke.add_argument("--lib-dir", metavar="DIR", help="folder with libbmrt.so on the machine")
    smoke.add_argument("--smoke-model", metavar="BMODEL", help="bmodel to run (default: the tiny test model)")
    smoke.add_argument("--smoke-timeout", type=float, default=120.0, metavar="S", help="engine hang timeout")
    add_fleet_arguments(parser)
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class HostPlay:
    """One host's plan (always made) and run (None for --dry-run)."""

    planned: list[Any]
    outcomes: list[Any] | None


def play_on(book: Any, target: Any, options: Any, state_dir: Path, dry_run: bool, restart: bool,
            confirm: Any = None, variables: dict[str, str] | None = None,
            sources: dict[str, Any] | None = None) -> HostPlay:
    """Plan the playbook on one machine, then (unless dry run, and once confirmed) run it.

    ``sources`` (FixSources.as_args()) says where operations get the debs; a step's own args win.
    """
    from llmtpu.playbook import PlayRunner, PlayState
    from llmtpu.provision.registry import operation_for

    key = hashlib.sha256(f"{target.name}:{target.root}".encode()).hexdigest()[:12]
    state_file = state_dir / f"{book.name}-{target.name}-{key}.json"
    if restart and state_file.exists():
        state_file.unlink()

    def build(op_id: str, op_args: dict[str, Any]) -> Any:
        return operation_for(op_id, target, {**(sources or {}), **op_args})

    def execute(dry: bool) -> list[Any]:
        return PlayRunner(book, target, PlayState.load(state_file), options, build, dry_run=dry,
                          variables=variables).run()

    planned = execute(True)
    if dry_run:
        return HostPlay(planned, None)
    if confirm is not None and any(o.status == "planned" for o in planned) and not confirm(planned):
        return HostPlay(planned, [])
    return HostPlay(planned, execute(False))


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import DEFAULT_MODEL, DoctorOptions, check_ids
    from llmtpu.playbook import PlaybookError, builtin_names, parse_playbook, read_playbook_text
    from llmtpu.provision.debs import ApplyInterrupted, RefusedInput
    from llmtpu.provision.operation import ConfirmationRefused, OperationError, ask_to_apply
    from llmtpu.provision.registry import debs_source_from_args, operation_ids
    from llmtpu.target import LocalTarget, TargetError

    if args.list:
        for name in builtin_names():
            text, source = read_playbook_text(name)
            book = parse_playbook(text, source, set(check_ids()), operation_ids())
            print(f"{name:22} {book.summary}")
        return 0
    if not args.playbook:
        raise UsageError("play: name a playbook (see `llmtpu play --list`) or give the path of a .toml file")
    try:
        text, source = read_playbook_text(args.playbook)
        book = parse_playbook(text, source, set(check_ids()), operation_ids())
    except PlaybookError as exc:
        raise UsageError(str(exc)) from exc
    options = DoctorOptions(model=args.model or DEFAULT_MODEL, engine=args.engine, lib_dir=args.lib_dir,
                            smoke_model=args.smoke_model, smoke_timeout=args.smoke_timeout)
    variables = {}
    for item in args.variables:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--set {item!r}: give NAME=VALUE")
        variables[name] = value
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    sources = debs_source_from_args(args).as_args()
    if args.inventory or args.hosts:
        refuse_root_with_hosts(args.root)
        if not (args.dry_run or args.yes):
            raise UsageError("a playbook on many hosts runs without questions: review it with --dry-run, "
                             "then pass --yes")
        return run_many(args, book, options, state_dir, variables, sources)
    target = LocalTarget(local_root(args.root))

    def confirm(planned: list[Any]) -> bool:
        render(book.name, target.name, planned, "plan")
        return ask_to_apply(args.yes)

    try:
        played = play_on(book, target, options, state_dir, args.dry_run, args.restart, confirm, variables, sources)
    except ApplyInterrupted as exc:  # the message holds the way back
        print(f"llmtpu: {exc}", file=sys.stderr)
        return 130
    except (PlaybookError, ConfirmationRefused, RefusedInput) as exc:
        raise UsageError(str(exc)) from exc
    except (OperationError, TargetError, OSError) as exc:  # a refused file access too: one line
        print(f"llmtpu: play failed: {exc}", file=sys.stderr)
        return 2
    if played.outcomes is None:
        render(book.name, target.name, played.planned, "plan")
        return 2 if any(o.status == "failed" for o in played.planned) else 0
    if not played.outcomes:
        print("nothing applied", file=sys.stderr)
        return 1
    render(book.name, target.name, played.outcomes, "run")
    return exit_code(played.outcomes)


def exit_code(outcomes: list[Any]) -> int:
    if any(o.status == "failed" for o in outcomes):
        return 2
    if any(o.status == "stopped" for o in outcomes):
        return 1
    return 0


def run_many(args: argparse.Namespace, book: Any, options: Any, state_dir: Path, variables: dict[str, str],
             sources: dict[str, Any]) -> int:
    """Every host at once (bounded pool): plans printed per host, then a per-host summary."""
    from rich.console import Console

    from llmtpu.fleet import live_progress, run_on_hosts
    from llmtpu.hosts_command import hosts_from_args

    specs, ssh_options = hosts_from_args(args)
    with live_progress(len(specs), Console(stderr=True), "playing") as (on_start, on_done):
        results = run_on_hosts(
            specs, lambda target: play_on(book, target, options, state_dir, args.dry_run, args.restart,
                                          variables=variables, sources=sources),
            ssh_options, parallel=args.parallel, on_start=on_start, on_done=on_done)
    worst = 0
    rows = []
    for res in results:
        name = res.spec.name
        if not res.checked or res.value is None:
            rows.append((name, "unreachable" if res.status != "error" else "error", res.error or res.status))
            worst = max(worst, 3)
            continue
        outcomes = res.value.planned if res.value.outcomes is None else res.value.outcomes
        render(book.name, name, outcomes, "plan" if res.value.outcomes is None else "run")
        failed_plan = any(o.status == "failed" for o in outcomes)
        code = (2 if failed_plan else 0) if res.value.outcomes is None else exit_code(outcomes)
        worst = max(worst, code)
        last = next((o for o in reversed(outcomes) if o.status not in ("done earlier", "skipped")), None)
        verdict = {0: "complete" if res.value.outcomes is not None else "planned", 1: "stopped", 2: "failed"}[code]
        rows.append((name, verdict, f"{last.step}: {' '.join(last.lines[-1:])}" if last else ""))
    summarise(book.name, rows)
    return worst


def summarise(name: str, rows: list[tuple[str, str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: per host")
    for column in ("host", "result", "where"):
        table.add_column(column)
    style = {"complete": "green", "planned": "cyan", "stopped": "yellow", "failed": "bold red"}
    for host, verdict, where in rows:
        table.add_row(host, f"[{style.get(verdict, 'bold red')}]{verdict}[/]", where)
    Console(highlight=False).print(table)


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
