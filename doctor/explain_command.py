"""`llmtpu explain [FILE|-]`: find known error lines in a log and print cause and fix.

Exit codes: 0 no known error found, 1 at least one found (so a script can test `explain` like
the doctor: non-zero means there is something to fix), 64 usage (FILE missing or unreadable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from llmtpu.clikit import UsageError

if TYPE_CHECKING:
    from llmtpu.doctor.explain import Match, SignatureFix

#: Version of the --json document. Bump the major on any incompatible change.
JSON_SCHEMA = "llmtpu.explain/1"
EXIT_CLEAN = 0
EXIT_FOUND = 1


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "explain", help="explain known error lines in a log",
        description="Read a log (an engine's output, dmesg, a build log) and print every known "
                    "error line with its line number, cause and exact fix. Exit 0 nothing known "
                    "found, 1 known errors found, 64 usage.",
    )
    parser.add_argument("file", nargs="?", default="-", metavar="FILE",
                        help="the log to read; - (the default) reads standard input")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema llmtpu.explain/1)")
    parser.set_defaults(run=run)


def _lines(handle: BinaryIO) -> Iterator[str]:
    """Lines split at \\n only, so numbers agree with `grep -n` even with \\r progress bars."""
    for raw in handle:
        yield raw.decode("utf-8", errors="replace")


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.explain import Matcher

    matcher = Matcher()
    name = "<stdin>" if args.file == "-" else args.file
    counter = _Counter()
    try:
        if args.file == "-":
            matches = matcher.scan(counter.count(_lines(sys.stdin.buffer)))
        else:
            with open(args.file, "rb") as handle:
                matches = matcher.scan(counter.count(_lines(handle)))
    except FileNotFoundError as exc:
        raise UsageError(f"{name}: no such file; give the path of a log, or - to read standard input") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{name}: is a folder; give the path of a log file") from exc
    except PermissionError as exc:
        raise UsageError(f"{name}: permission denied; run as a user who can read it (dmesg logs: sudo)") from exc
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    if args.json:
        render_json(name, counter.lines, len(matcher.signatures), matches, sys.stdout)
    else:
        render_human(name, counter.lines, len(matcher.signatures), matches, sys.stdout)
    return EXIT_FOUND if matches else EXIT_CLEAN


class _Counter:
    """Counts lines as they stream past, for the "N lines read" part of the output."""

    def __init__(self) -> None:
        self.lines = 0

    def count(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            self.lines += 1
            yield line


def render_json(name: str, lines: int, checked: int, matches: list[Match], out: IO[str]) -> None:
    from llmtpu.doctor.explain import match_json

    document = {
        "schema": JSON_SCHEMA,
        "input": name,
        "lines": lines,
        "signatures_checked": checked,
        "matches": [match_json(m) for m in matches],
    }
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_human(name: str, lines: int, checked: int, matches: list[Match], out: IO[str]) -> None:
    from rich.console import Console
    from rich.text import Text

    from llmtpu.doctor.explain import group_by_signature

    console = Console(file=out, highlight=False, soft_wrap=True)
    if not matches:
        console.print(Text(f"{name}: no known error in {lines} lines ({checked} signatures checked)", style="green"))
        return
    groups = group_by_signature(matches)
    console.print(Text(f"{name}: {len(groups)} known error(s) in {lines} lines", style="bold"))
    for sig, found in groups:
        style = "bold red" if sig.severity == "fail" else "yellow"
        numbers = ", ".join(str(m.line_no) for m in found[:10]) + (" …" if len(found) > 10 else "")
        console.print()
        console.print(Text(f"{sig.id}  {sig.severity}  line {numbers}", style=style))
        console.print(Text(f"  {found[0].text}", style="dim"))
        console.print(Text(f"  cause: {sig.cause}"))
        fixes: list[tuple[str, SignatureFix]] = [("fix", sig.fix)]
        if sig.soc_fix is not None:
            fixes.append(("on a SoC board", sig.soc_fix))
        for label, fix in fixes:
            console.print(Text(f"  {label} ({fix.id}): {fix.summary}"))
            for command in fix.commands:
                console.print(Text(f"    $ {command}", style="cyan"))
        console.print(Text(f"  source: {sig.source}", style="dim"))
