"""The command-line kit every sub-command shares: the one exit-code table, the usage error, the
argument parser class and the checks of `--root`.

A leaf module: it imports nothing of llmtpu, so command modules can use it without importing
`llmtpu.cli` (which imports every command) and the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import os
from enum import IntEnum
from typing import NoReturn


class Exit(IntEnum):
    """What every llmtpu command's exit status means (the README's exit-code table)."""

    OK = 0  #: done, or every check ok
    WARN = 1  #: warnings, or stopped for a manual step (reboot, reflash) — rerun continues
    FAILED = 2  #: something failed: a check, an operation, a verification
    UNREACHABLE = 3  #: a host could not be reached (network, host key, login)
    USAGE = 64  #: usage error or refused input (EX_USAGE): nothing was changed
    BUSY = 75  #: another llmtpu holds the lock on that machine (EX_TEMPFAIL): try again later
    INTERRUPTED = 130  #: interrupted (SIGINT/SIGTERM); the way back was printed
    BROKEN_PIPE = 141  #: the reader of our output went away (`llmtpu ... | head`)


#: Kept as a plain name: argparse and callers compare ints.
EXIT_USAGE = int(Exit.USAGE)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 64."""


class Parser(argparse.ArgumentParser):
    """argparse with llmtpu's usage exit code and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"llmtpu: error: {message} (see `{self.prog} --help`)\n")


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
