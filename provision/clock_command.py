"""`llmtpu clock show|apply|persist|undo`: argument parsing, confirmation and output.

Exit codes (llmtpu.clikit.Exit): 0 done (or nothing to do), 2 failed or applied but the
read-back shows other rates (one line on stderr), 64 usage error or not confirmed (nothing changed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmtpu.clikit import Exit, UsageError, local_root


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "clock", help="show, lower, persist or undo the SoC's TPU/memory/video PLL rates",
        description="Read the PLL rates from debugfs clk/*/clk_rate, apply LLM-TPU's downclock "
                    "(tpll 750 MHz, mpll 1800 MHz, vpll 100 MHz; README Q3) or given rates, keep them "
                    "across reboots with a systemd oneshot, and undo back to the rates saved before "
                    "the first apply. Needs root on the board.",
    )
    parser.add_argument("action", choices=("show", "apply", "persist", "undo"))
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="act on the machine whose files are in this sysroot folder instead of /")
    for name in ("tpll", "mpll", "vpll"):
        parser.add_argument(f"--{name}", metavar="RATE",
                            help=f"{name}_clock rate with its unit, e.g. 750MHz, 0.75GHz, 750000000Hz; a bare "
                                 "number means MHz. When any rate is given only the given ones are set")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--yes", action="store_true", help="apply without asking")
    parser.add_argument("--json", action="store_true", help="`show` only: one JSON document (llmtpu.clock/1)")
    parser.set_defaults(run=run)


def _rates(args: argparse.Namespace) -> dict[str, int] | None:
    from llmtpu.provision.clock import parse_rate
    from llmtpu.provision.operation import OperationError

    given = {}
    for name in ("tpll", "mpll", "vpll"):
        text = getattr(args, name)
        if text is None:
            continue
        try:
            given[f"{name}_clock"] = parse_rate(text)
        except OperationError as exc:
            raise UsageError(f"--{name}: {exc}") from exc
    return given or None


def run(args: argparse.Namespace) -> int:
    from llmtpu.provision.operation import ConfirmationRefused, OperationError
    from llmtpu.target import LocalTarget, TargetError

    local_root(args.root)
    if args.json and args.action != "show":
        raise UsageError("--json: only `llmtpu clock show` prints JSON")
    if _rates(args) and args.action not in ("apply", "persist"):
        raise UsageError(f"--tpll/--mpll/--vpll: `clock {args.action}` takes no rates")
    target = LocalTarget(args.root)
    try:
        if args.action == "show":
            return _show(target, args.json)
        if args.action == "undo":
            return _undo(target, args)
        return _apply(target, args)
    except OperationError as exc:  # not confirmed (no terminal, no --yes) is refused input
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.USAGE if isinstance(exc, ConfirmationRefused) else Exit.FAILED
    except (TargetError, OSError) as exc:  # a refused or failed file access: one line, not a traceback
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.FAILED


def _operation(args: argparse.Namespace) -> Any:
    from llmtpu.provision.clock import ClockApply, ClockPersist
    from llmtpu.provision.operation import OperationError

    kind = ClockApply if args.action == "apply" else ClockPersist
    try:
        return kind(_rates(args))
    except OperationError as exc:
        raise UsageError(f"--tpll/--mpll/--vpll: {exc}") from exc


def _show(target: Any, as_json: bool) -> int:
    from llmtpu.doctor.checks import SOC_DEFAULT_CLOCKS
    from llmtpu.provision.clock import UNIT_PATH, pending_records, read_rates, same_rate

    rates = read_rates(target)
    differs = [n for n, r in rates.items() if not same_rate(r, SOC_DEFAULT_CLOCKS[n])]
    persisted = target.exists(UNIT_PATH)
    pending = [r.operation for r in pending_records(target)]
    if as_json:
        doc = {"schema": "llmtpu.clock/1", "host": target.name, "root": target.root, "rates_hz": rates,
               "defaults_hz": SOC_DEFAULT_CLOCKS, "differs": differs, "persisted": persisted,
               "undo_pending": pending}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PLL rates on {target.name} (debugfs clk/*/clk_rate)")
    for column in ("clock", "now MHz", "default MHz", ""):
        table.add_column(column)
    for name, rate in rates.items():
        table.add_row(name, f"{rate / 1e6:g}", f"{SOC_DEFAULT_CLOCKS[name] / 1e6:g}",
                      "differs" if name in differs else "default")
    console = Console(highlight=False)
    console.print(table)
    console.print(f"boot unit {UNIT_PATH}: {'installed' if persisted else 'not installed'}")
    if pending:
        console.print(f"`llmtpu clock undo` would undo: {', '.join(pending)}")
    return 0


def _print_plans(target: Any, plans: list[Any]) -> None:
    for plan in plans:
        for line in plan.lines(target.root):
            print(line)


def _apply(target: Any, args: argparse.Namespace) -> int:
    from llmtpu.provision.operation import Journal, confirm

    operation = _operation(args)
    plan = operation.plan(target)
    _print_plans(target, [plan])
    if args.dry_run or plan.nothing_to_do:
        return 0
    if not confirm([plan], args.yes):
        print("nothing changed", file=sys.stderr)
        return Exit.USAGE
    operation.apply(target, plan, Journal(target))
    problems = operation.verify(target)
    for problem in problems:
        print(f"llmtpu: not in effect: {problem}", file=sys.stderr)
    if problems:
        return Exit.FAILED
    print(f"{operation.id}: done and verified; `llmtpu clock undo` goes back, `llmtpu doctor` re-checks")
    return 0


def _undo(target: Any, args: argparse.Namespace) -> int:
    from llmtpu.provision.clock import CLOCK_OPERATIONS, pending_records
    from llmtpu.provision.operation import confirm

    records = pending_records(target)
    if not records:
        print(f"clock.undo on {target.name}: nothing to undo (no clock change in the journal)")
        return 0
    operations = [(CLOCK_OPERATIONS[r.operation](), r) for r in records]
    plans = [op.plan_undo(target, r) for op, r in operations]
    _print_plans(target, plans)
    if len(records) > 1:
        print("  note: records are undone newest first, ending at the rates saved before the first apply")
    if args.dry_run:
        return 0
    if not all(p.nothing_to_do for p in plans) and not confirm(plans, args.yes):
        print("nothing changed", file=sys.stderr)
        return Exit.USAGE
    for operation, record in operations:
        operation.undo(target, record)
    print(f"undid {len(records)} clock change(s); `llmtpu clock show` reads the rates back")
    return 0
