"""`llmtpu explain [FILE|-]`: find known error lines in a log and print cause and fix.

Which fix a line gets depends on the machine the log came from: `--root DIR` runs the doctor's
checks on that machine (`/` for this one) and `--doctor FILE` reads a saved `llmtpu doctor
--json`; without either the least destructive fix is given, never a reflash.

Exit codes: 0 no known error found, 1 at least one found (so a script can test `explain` like
the doctor: non-zero means there is something to fix), 64 usage (FILE missing, unreadable, not
a text log).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from llmtpu.clikit import Exit, UsageError, local_root

if TYPE_CHECKING:
    from llmtpu.doctor.explain import DoctorEvidence, Match

#: Version of the --json document. Bump the major on any incompatible change.
JSON_SCHEMA = "llmtpu.explain/1"
#: A log line longer than this is not a log line (/dev/zero, a binary file): reading stops.
MAX_LINE_BYTES = 1 << 20


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
    evidence = parser.add_mutually_exclusive_group()
    evidence.add_argument("--root", metavar="DIR",
                          help="judge the fixes by the doctor's findings on this machine: / for this one, "
                               "or a sysroot folder")
    evidence.add_argument("--doctor", metavar="JSON",
                          help="judge the fixes by a saved `llmtpu doctor --json` of the machine the log is from")
    parser.set_defaults(run=run)


class NotALog(Exception):
    """The input is not a text log (a device, a binary file); the message says what to give."""


def _lines(handle: BinaryIO, name: str) -> Iterator[str]:
    """Lines split at \\n only, so numbers agree with `grep -n` even with \\r progress bars.

    Each read is bounded: a line longer than MAX_LINE_BYTES ends the reading with NotALog.
    """
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise NotALog(f"{name}: line {number} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                          "give a text log (this looks like a binary file or a device)")
        yield raw.decode("utf-8", errors="replace")


def _open_log(path: str) -> BinaryIO:
    """The log file, refusing devices (`explain /dev/zero` would never end) before reading."""
    handle = open(path, "rb")  # noqa: SIM115 - returned to the caller's with-block
    mode = os.fstat(handle.fileno()).st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        handle.close()
        raise NotALog(f"{path}: is a device, not a log; give a log file, or - to read standard input")
    return handle


def doctor_evidence(args: argparse.Namespace) -> DoctorEvidence:
    """The evidence --root or --doctor names; none given: nothing known."""
    from llmtpu.doctor.explain import NO_EVIDENCE, DoctorEvidence

    if args.doctor:
        try:
            with open(args.doctor, encoding="utf-8") as handle:
                document = json.load(handle)
            return DoctorEvidence.from_doctor_json(document, args.doctor)
        except OSError as exc:
            raise UsageError(f"--doctor: cannot read {args.doctor}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # json.JSONDecodeError is one
            raise UsageError(f"--doctor: {args.doctor}: {exc}; give the output of `llmtpu doctor --json`") from exc
    if args.root:
        from llmtpu.doctor.checks import DoctorOptions, Facts
        from llmtpu.doctor.checks import doctor_evidence as from_facts
        from llmtpu.target import LocalTarget

        local_root(args.root)
        target = LocalTarget(args.root)
        return from_facts(Facts(target, DoctorOptions()))
    return NO_EVIDENCE


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.explain import default_matcher

    evidence = doctor_evidence(args)
    matcher = default_matcher()
    name = "<stdin>" if args.file == "-" else args.file
    counter = _Counter()
    try:
        if args.file == "-":
            matches = matcher.scan(counter.count(_lines(sys.stdin.buffer, name)))
        else:
            with _open_log(args.file) as handle:
                matches = matcher.scan(counter.count(_lines(handle, name)))
    except NotALog as exc:
        raise UsageError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise UsageError(f"{name}: no such file; give the path of a log, or - to read standard input") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{name}: is a folder; give the path of a log file") from exc
    except PermissionError as exc:
        raise UsageError(f"{name}: permission denied; run as a user who can read it (dmesg logs: sudo)") from exc
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    if args.json:
        render_json(name, counter.lines, len(matcher.signatures), matches, evidence, sys.stdout)
    else:
        render_human(name, counter.lines, len(matcher.signatures), matches, evidence, sys.stdout)
    return Exit.WARN if matches else Exit.OK


class _Counter:
    """Counts lines as they stream past, for the "N lines read" part of the output."""

    def __init__(self) -> None:
        self.lines = 0

    def count(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            self.lines += 1
            yield line


def render_json(name: str, lines: int, checked: int, matches: list[Match], evidence: DoctorEvidence,
                out: IO[str]) -> None:
    from llmtpu.doctor.explain import match_json

    document = {
        "schema": JSON_SCHEMA,
        "input": name,
        "lines": lines,
        "signatures_checked": checked,
        "evidence": {"origin": evidence.origin, "machine_kind": evidence.machine_kind} if evidence.checks else None,
        "matches": [match_json(m, evidence) for m in matches],
    }
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_human(name: str, lines: int, checked: int, matches: list[Match], evidence: DoctorEvidence,
                 out: IO[str]) -> None:
    from rich.console import Console
    from rich.text import Text

    from llmtpu.doctor.explain import group_by_signature

    console = Console(file=out, highlight=False, soft_wrap=True)
    if not matches:
        console.print(Text(f"{name}: no known error in {lines} lines ({checked} signatures checked)", style="green"))
        return
    groups = group_by_signature(matches)
    console.print(Text(f"{name}: {len(groups)} known error(s) in {lines} lines", style="bold"))
    if evidence.checks:
        console.print(Text(f"fixes judged by the doctor's findings on {evidence.origin or 'the machine'} "
                           f"({evidence.machine_kind})", style="dim"))
    for sig, found in groups:
        style = "bold red" if sig.severity == "fail" else "yellow"
        numbers = ", ".join(str(m.line_no) for m in found[:10]) + (" …" if len(found) > 10 else "")
        console.print()
        console.print(Text(f"{sig.id}  {sig.severity}  line {numbers}", style=style))
        console.print(Text(f"  {found[0].text}", style="dim"))
        console.print(Text(f"  cause: {sig.cause}"))
        chosen = sig.fix_for(evidence)
        for fix in sig.fixes:
            verdict = fix.applies(evidence)
            if verdict is False:
                continue
            label = "fix" if fix is chosen else ("or" if verdict else "if")
            when = f" when {fix.describe_when()}" if fix.when and fix is not chosen else ""
            console.print(Text(f"  {label} ({fix.id}){when}: {fix.summary}"))
            if fix is chosen or verdict:
                for command in fix.commands:
                    console.print(Text(f"    $ {command}", style="cyan"))
        console.print(Text(f"  source: {sig.source}", style="dim"))
