"""The `llmtpu` command line: one sub-command per capability, each defined beside its code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from llmtpu import __version__

#: Usage errors exit with EX_USAGE (sysexits.h), distinct from the doctor's 0/1/2/3.
EXIT_USAGE = 64


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 64."""


def local_root(root: str) -> str:
    """A --root that is an existing folder, or one usage line naming it."""
    if not os.path.exists(root):
        raise UsageError(f"--root: {root} does not exist; give the folder that holds the machine's files")
    if not os.path.isdir(root):
        raise UsageError(f"--root: {root} is not a folder; give the folder that holds the machine's files")
    return root


def refuse_root_with_hosts(root: str) -> None:
    """--root is a local sysroot; remote machines get theirs per host from the inventory."""
    if root != "/":
        raise UsageError("--root reads a local sysroot; for remote machines set root=DIR per host in the inventory")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"llmtpu: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from llmtpu import hosts_command, metrics_command, play_command
    from llmtpu.doctor import command as doctor_command
    from llmtpu.doctor import explain_command, models_command, support_report_command
    from llmtpu.provision import bundle_command, clock_command, push_command, sdcard_command
    from llmtpu.provision import command as provision_command
    from llmtpu.runtime import command as engine_command

    parser = Parser(prog="llmtpu", description="Take Sophgo BM1684X machines from fresh to running LLM-TPU "
                    "models correctly: one machine or a fleet, online or offline.")
    parser.add_argument("--version", action="version", version=f"llmtpu {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    doctor_command.add_parser(commands)
    play_command.add_parser(commands)
    hosts_command.add_parser(commands)
    models_command.add_parser(commands)
    explain_command.add_parser(commands)
    support_report_command.add_parser(commands)
    provision_command.add_parser(commands)
    clock_command.add_parser(commands)
    sdcard_command.add_parser(commands)
    engine_command.add_parser(commands)
    bundle_command.add_parser(commands)
    push_command.add_parser(commands)
    metrics_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except UsageError as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmtpu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`llmtpu ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code
