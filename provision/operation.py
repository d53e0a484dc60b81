"""Operations in pyinfra's sense: read state, plan only what differs, apply, verify, undo.

An operation never changes anything in ``plan``; ``apply`` carries out a plan made just
before and records in the machine's journal what it needs to undo itself. Running an
operation twice gives an empty plan the second time ("nothing to do").

The journal lives on the machine (under the target's root), so an undo works from any
controller, and a sysroot carries its own history: ``/var/lib/llmtpu/journal/<stamp>-<op>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from llmtpu.target import Target

JOURNAL_DIR = "/var/lib/llmtpu/journal"


class OperationError(Exception):
    """An operation could not be planned or applied; the message is one actionable line."""


class ConfirmationRefused(OperationError):
    """No terminal to ask on and no --yes: a usage problem, not a failed operation."""


@dataclass(frozen=True)
class Change:
    """One thing an operation will change, said before it is done."""

    what: str  # e.g. "write /etc/systemd/system/llmtpu-clock.service"
    before: str | None = None  # current state, for the diff (None: absent)
    after: str | None = None  # state after the change (None: removed)


@dataclass
class Plan:
    operation: str  # operation id, e.g. "clock.apply"
    host: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    needs_root: bool = True
    reboot_required: bool = False  # the change takes effect only after the machine reboots
    #: nothing left to change, but an earlier apply waits for a reboot to take effect
    reboot_pending: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return not self.changes

    def lines(self, root: str = "/") -> list[str]:
        """The plan as text, diff style: what is, what will be. ``root`` names a sysroot in the header."""
        where = self.host if root.rstrip("/") == "" else f"{self.host} (--root {root})"
        if self.nothing_to_do:
            return [f"{self.operation} on {where}: nothing to do"] + [f"  note: {n}" for n in self.notes]
        out = [f"{self.operation} on {where}: {len(self.changes)} change(s)"]
        for change in self.changes:
            out.append(f"  * {change.what}")
            if change.before is not None:
                out.extend(f"    - {line}" for line in change.before.splitlines() or [""])
            if change.after is not None:
                out.extend(f"    + {line}" for line in change.after.splitlines() or [""])
        out.extend(f"  note: {n}" for n in self.notes)
        return out


@dataclass
class JournalRecord:
    """What one apply changed, with what undo needs (operation-specific ``undo`` data)."""

    operation: str
    started: str
    undo: dict[str, Any]
    path: str = ""
    undone: bool = False


class Journal:
    """Append-only records of applied operations on one machine, newest last."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def record(self, operation: str, undo: dict[str, Any]) -> JournalRecord:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        existing = self._names()
        serial = len(existing)
        path = f"{JOURNAL_DIR}/{stamp}-{serial:04d}-{operation}.json"
        entry = JournalRecord(operation, stamp, undo, path)
        self.target.write_atomic(path, (json.dumps(asdict(entry), indent=2) + "\n").encode(), backup=False)
        return entry

    def _names(self) -> list[str]:
        try:
            return sorted(n for n in self.target.listdir(JOURNAL_DIR) if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def records(self) -> list[JournalRecord]:
        found = []
        for name in self._names():
            path = f"{JOURNAL_DIR}/{name}"
            data = json.loads(self.target.read_text(path))
            data["path"] = path
            found.append(JournalRecord(**data))
        return found

    def last(self, operation_prefix: str = "") -> JournalRecord | None:
        """The newest record not yet undone (optionally of operations starting with a prefix)."""
        for entry in reversed(self.records()):
            if not entry.undone and entry.operation.startswith(operation_prefix):
                return entry
        return None

    def mark_undone(self, entry: JournalRecord) -> None:
        entry.undone = True
        self.target.write_atomic(entry.path, (json.dumps(asdict(entry), indent=2) + "\n").encode(), backup=False)


class Operation(ABC):
    """A change of state that says what it will do before doing it, and can be undone."""

    id: str = ""
    summary: str = ""

    @abstractmethod
    def plan(self, target: Target) -> Plan:
        """Read state and list what differs. Never changes anything."""

    @abstractmethod
    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        """Carry out ``plan`` (made just before), recording undo data in ``journal``."""

    @abstractmethod
    def verify(self, target: Target) -> list[str]:
        """Problems left after apply; empty when the machine is in the wanted state."""

    @abstractmethod
    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        """Put back what ``entry`` recorded; returns the plan it carried out."""


def restore_backup(target: Target, backup: str, path: str, mode: int = 0o644, limit: int = 1 << 30) -> None:
    """Put ``backup`` back at ``path`` as what it is: a replaced link comes back as that link
    (its text, never followed), a file as its bytes."""
    st = target.lstat(backup)
    if st is not None and st.kind == "link":
        target.symlink(target.readlink(backup), path)
    else:
        target.write_atomic(path, target.read_bytes(backup, limit=limit), mode=mode, backup=False)


def confirm(plans: list[Plan], assume_yes: bool, stdin: TextIO | None = None, out: TextIO | None = None) -> bool:
    """Ask before applying plans; False when there is nothing to do."""
    if all(p.nothing_to_do for p in plans):
        return False
    return ask_to_apply(assume_yes, stdin, out)


def ask_to_apply(assume_yes: bool, stdin: TextIO | None = None, out: TextIO | None = None) -> bool:
    """Ask before a destructive apply. No terminal to ask on and no --yes: refuse, never guess."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stderr
    if assume_yes:
        return True
    if stdin is None or not stdin.isatty():
        raise ConfirmationRefused("refusing to change the machine without confirmation: no terminal to ask on; "
                             "review the plan with --dry-run and pass --yes")
    out.write("Apply these changes? [y/N] ")
    out.flush()
    return stdin.readline().strip().lower() in ("y", "yes")
