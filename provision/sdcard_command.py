"""`llmtpu sdcard stage`: argument parsing, confirmation, progress and the board steps.

Exit codes (llmtpu.clikit.Exit): 0 staged and verified (or a dry run), 2 written but the read-back
differs, 64 usage error or refused (archive, card, no confirmation: nothing was written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llmtpu.clikit import Exit, UsageError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sdcard", help="stage Sophgo's sdcard.tgz on a FAT32 SD card for a SoC board to reflash from",
        description="Check the archive and the card, copy with mtools (no mount), read every file back "
                    "from the card and compare it with the archive, then print the steps on the board.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    stage = actions.add_parser("stage", help="check, copy and verify an sdcard.tgz onto a card")
    stage.add_argument("archive", metavar="SDCARD_TGZ", help="the sdcard.tgz from the SDK or `llmtpu fetch sdcard`")
    where = stage.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", metavar="/dev/sdX", help="the card in this machine's reader (a block device)")
    where.add_argument("--image", metavar="FILE", help="a card image file to write into instead")
    stage.add_argument("--dry-run", action="store_true", help="check and print the plan, write nothing")
    stage.add_argument("--yes", action="store_true", help="write without asking")
    stage.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    archive = Path(args.archive)
    if not archive.is_file():
        raise UsageError(f"SDCARD_TGZ: {archive} is not a file; give the downloaded sdcard.tgz")
    card_path = args.device or args.image
    option = "--device" if args.device else "--image"
    if not os.path.exists(card_path):
        raise UsageError(f"{option}: {card_path} does not exist; give the card's device or an image file")

    from llmtpu.provision.operation import OperationError, confirm
    from llmtpu.provision.sdcard import BOARD_STEPS, CardWriter, SdcardError, prepare

    try:
        card, staged, plan = prepare(archive, card_path, bool(args.device))
    except SdcardError as exc:
        print(f"llmtpu: refused: {exc}; nothing was written", file=sys.stderr)
        return Exit.USAGE
    for line in plan.lines():
        print(line)
    if args.dry_run:
        return 0
    try:
        if not confirm([plan], args.yes):
            print("nothing was written", file=sys.stderr)
            return Exit.USAGE
    except OperationError as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.USAGE
    with ProgressBar() as progress:
        try:
            problems = CardWriter(card, staged, progress=progress).write_and_verify()
        except SdcardError as exc:
            print(f"llmtpu: error: {exc}", file=sys.stderr)
            return Exit.FAILED
    for problem in problems:
        print(f"llmtpu: verify failed: {problem}", file=sys.stderr)
    if problems:
        return Exit.FAILED
    print(f"{len(staged.files)} file(s), {staged.total_bytes} bytes written to {card_path} and read back: "
          "all match the archive.")
    print("On the board:")
    for number, step in enumerate(BOARD_STEPS, 1):
        print(f"  {number}. {step}")
    return 0


class ProgressBar:
    """A rich progress bar per phase on a terminal; silent otherwise (no bar in logs or pipes)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), disable=not sys.stderr.isatty())
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total or 1)
        self.bar.update(self.tasks[phase], completed=done)
