"""The `llmtpu` command line: one sub-command per capability, each defined beside its code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llmtpu import __version__
from llmtpu.clikit import Exit, Parser, UsageError


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
        return int(Exit.USAGE)
    try:
        code: int = args.run(args)
    except UsageError as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return int(Exit.USAGE)
    except KeyboardInterrupt:
        print("llmtpu: interrupted", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:  # the reader went away (`llmtpu ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(Exit.BROKEN_PIPE)
    return code
