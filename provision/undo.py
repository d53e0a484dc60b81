"""`llmtpu undo`: revert the newest applied operation recorded in the machine's journal.

The journal lives on the machine (provision/operation.py), so undo works from any
controller and a sysroot carries its own history. Each operation id maps to the function
that reverts it; an id with no entry here is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmtpu.provision import debs
from llmtpu.provision.clock import ClockApply, ClockPersist
from llmtpu.provision.heaps import ResizeHeaps
from llmtpu.provision.monitor import MonitorInstall
from llmtpu.provision.operation import Journal, JournalRecord, OperationError, Plan
from llmtpu.target import Target

Undoer = Callable[[Target, JournalRecord, bool], Plan]


class Undoable(Protocol):
    def plan_undo(self, target: Target, entry: JournalRecord) -> Plan: ...
    def undo(self, target: Target, entry: JournalRecord) -> Plan: ...


def by_operation(make: Callable[[], Undoable]) -> Undoer:
    """An undoer from an operation whose undo needs nothing but the journal record."""

    def run(target: Target, entry: JournalRecord, execute: bool) -> Plan:
        operation = make()
        return operation.undo(target, entry) if execute else operation.plan_undo(target, entry)

    return run


#: operation id -> function(target, record, execute) that plans and (when execute) reverts it.
UNDOERS: dict[str, Undoer] = {
    "debs.install": debs.undo_install,
    "debs.configure": debs.undo_install,
    "clock.apply": by_operation(ClockApply),
    "clock.persist": by_operation(ClockPersist),
    "heaps.resize": by_operation(ResizeHeaps),
    "monitor.install": by_operation(MonitorInstall),
}


def newest(target: Target) -> JournalRecord:
    entry = Journal(target).last()
    if entry is None:
        raise OperationError(f"{target.name}: nothing to undo (no journal record under the root {target.root})")
    if entry.operation not in UNDOERS:
        raise OperationError(f"{entry.path}: llmtpu cannot undo {entry.operation!r} records; "
                             "undo it by hand following its plan")
    return entry


def plan_undo(target: Target, entry: JournalRecord) -> Plan:
    """What undoing ``entry`` will do; changes nothing."""
    return UNDOERS[entry.operation](target, entry, False)


def undo(target: Target, entry: JournalRecord) -> Plan:
    """Revert ``entry`` and mark it undone; returns the plan it carried out."""
    plan = UNDOERS[entry.operation](target, entry, True)
    if not entry.undone:
        Journal(target).mark_undone(entry)
    return plan
