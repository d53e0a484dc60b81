"""The engine behind `llmtpu doctor --fix`: failing checks -> operations -> plan, confirm, apply, re-check.

Each failing check names a fix id (doctor/checks.py ``Fix.id``); provision/registry.py maps
the ids llmtpu can carry out to the operation that does it. Everything is planned first and shown as one
list; nothing is changed without a yes (``--yes``, or an answer on a terminal: no terminal and
no ``--yes`` is a refusal, never a guess). Changing a real machine needs root: a user who is
not root gets the same command re-run through ``sudo -n``, and a clear error when sudo would
ask for a password instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from llmtpu.doctor.checks import FAIL, WARN, CheckResult, DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.provision.operation import Journal, Operation, OperationError, Plan, confirm
from llmtpu.provision.registry import FACTORIES, FixSources
from llmtpu.target import Target

FIX_SCHEMA = "llmtpu.doctor.fix/1"


@dataclass
class FixSelection:
    """Which failing checks llmtpu can fix, grouped by fix id, and which it cannot."""

    checks_by_fix: dict[str, list[str]]
    manual: list[CheckResult]


def select_fixes(results: Sequence[CheckResult]) -> FixSelection:
    checks_by_fix: dict[str, list[str]] = {}
    manual = []
    for res in results:
        if res.status not in (WARN, FAIL) or res.fix is None:
            continue
        if res.fix.id in FACTORIES:
            checks_by_fix.setdefault(res.fix.id, []).append(res.id)
        else:
            manual.append(res)
    return FixSelection(checks_by_fix, manual)


@dataclass
class FixReport:
    """What `doctor --fix` planned, did and saw afterwards: rendered as text on the way, or as one JSON document."""

    host: str
    root: str
    manual: list[CheckResult] = field(default_factory=list)
    #: fixes whose operation could not be planned here (e.g. memory_edit.sh missing): checks and why
    unplannable: list[tuple[list[str], str]] = field(default_factory=list)
    plans: list[tuple[list[str], Plan]] = field(default_factory=list)
    #: nothing to do / manual steps left / not applied / applied / failed / rerun with sudo
    result: str = "nothing to do"
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    after_reboot: list[str] = field(default_factory=list)
    rechecks: list[CheckResult] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": FIX_SCHEMA,
            "host": self.host,
            "root": self.root,
            "manual": [{"check": r.id, "status": r.status, "fix": r.fix.id if r.fix else None,
                        "summary": r.fix.summary if r.fix else r.summary} for r in self.manual]
            + [{"check": c, "status": None, "fix": None, "summary": why} for checks, why in self.unplannable
               for c in checks],
            "plan": [{"checks": checks, "operation": plan.operation, "nothing_to_do": plan.nothing_to_do,
                      "changes": [{"what": c.what, "before": c.before, "after": c.after} for c in plan.changes],
                      "notes": plan.notes, "reboot_required": plan.reboot_required}
                     for checks, plan in self.plans],
            "result": {"status": self.result, "error": self.error, "problems": self.problems,
                       "reboot_needed_for": self.after_reboot},
            "verification": [{"id": r.id, "status": r.status, "summary": r.summary} for r in self.rechecks],
            "exit_code": self.exit_code,
        }


def needs_sudo(plans: Sequence[Plan], euid: int | None = None) -> bool:
    euid = os.geteuid() if euid is None else euid
    return euid != 0 and any(p.needs_root and not p.nothing_to_do for p in plans)


def rerun_with_sudo(argv: Sequence[str]) -> int:
    """Run ``llmtpu <argv> --yes`` again as root with ``sudo -n``; never let sudo prompt."""
    probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           check=False)
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["(nothing)"])[-1]
        if "password" in said:
            raise OperationError("root is needed to change this machine and sudo would ask for a password; "
                                 "run the same command with sudo, or as root")
        raise OperationError(f"root is needed to change this machine and `sudo -n` failed: {said}")
    command = ["sudo", "-n", "--", sys.executable, "-m", "llmtpu", *argv]
    if "--yes" not in argv:
        command.append("--yes")  # the user already said yes to the plan shown above
    return subprocess.call(command, stdin=subprocess.DEVNULL)


def doctor_fix(target: Target, options: DoctorOptions, assume_yes: bool, out: TextIO,
               sources: FixSources | None = None, only: Sequence[str] = (), stdin: TextIO | None = None,
               argv: Sequence[str] | None = None) -> FixReport:
    """`llmtpu doctor --fix`: plan every fix, confirm once, apply, verify, re-run the fixed checks.

    Progress (the plan before the question, then what happened) is written to ``out``. Nothing
    is downloaded or changed before the user agreed to the plan. ``argv`` is the command line to
    re-run through ``sudo -n`` when root is needed and the user is not root. Exit code: 0 every
    fixed check now ok (or nothing to fix), 2 otherwise.
    """
    sources = sources or FixSources()
    fixed = FixReport(target.name, target.root)
    report = run_doctor(target, options, only)
    selection = select_fixes(report.results)
    fixed.manual = list(selection.manual)
    for res in selection.manual:
        fix_id = res.fix.id if res.fix else "none"
        out.write(f"{res.id}: {res.status}: no automatic fix ({fix_id}); do it by hand: "
                  f"{res.fix.summary if res.fix else res.summary}\n")
    planned: list[tuple[list[str], Operation, Plan]] = []
    for fix_id, checks in selection.checks_by_fix.items():
        try:
            operation = FACTORIES[fix_id](target, sources.as_args())
            planned.append((checks, operation, operation.plan(target)))
        except OperationError as exc:  # this fix cannot even be planned here: a step for the user
            fixed.unplannable.append((checks, str(exc)))
            out.write(f"{', '.join(checks)}: cannot be fixed automatically here: {exc}\n")
    if not planned:
        out.write("nothing llmtpu can fix automatically: do the steps above by hand\n" if fixed.manual or
                  fixed.unplannable else "nothing to do: no check needs a fix\n")
        fixed.result = "nothing to do" if not (fixed.manual or fixed.unplannable) else "manual steps left"
        fixed.exit_code = 2 if fixed.manual or fixed.unplannable else 0
        return fixed
    operations = [operation for _, operation, _ in planned]
    plans = [plan for _, _, plan in planned]
    fixed.plans = [(checks, plan) for checks, _, plan in planned]
    for checks, plan in fixed.plans:
        out.write(f"for {', '.join(checks)}:\n")
        out.write("\n".join(plan.lines(target.root)) + "\n")
    if all(p.nothing_to_do for p in plans):
        out.write("nothing to do\n")
        fixed.result = "nothing to do"
        fixed.after_reboot = [c for checks, plan in fixed.plans if plan.reboot_pending for c in checks]
        unsettled = [c for checks, plan in fixed.plans if not plan.reboot_pending for c in checks]
        if fixed.after_reboot:
            out.write(f"reboot the machine to finish fixing {', '.join(fixed.after_reboot)}\n")
        if unsettled:
            out.write(f"{', '.join(unsettled)} still not ok although nothing is left to change; "
                      "see `llmtpu doctor -v`\n")
        fixed.exit_code = 2 if selection.manual or fixed.unplannable or unsettled else 1 if fixed.after_reboot else 0
        return fixed
    if not confirm(plans, assume_yes, stdin, out):
        out.write("not applied\n")
        fixed.result = "not applied"
        fixed.exit_code = 2
        return fixed
    if needs_sudo(plans):
        if argv is None:
            raise OperationError("root is needed to change this machine: run the same command as root")
        fixed.result = "rerun with sudo"
        fixed.exit_code = rerun_with_sudo(argv)
        return fixed
    journal = Journal(target)
    try:
        for (checks, plan), operation in zip(fixed.plans, operations, strict=True):
            if plan.nothing_to_do:
                continue
            operation.apply(target, plan, journal)
            fixed.problems.extend(f"{operation.id}: {p}" for p in operation.verify(target))
            if plan.reboot_required:
                fixed.after_reboot.extend(checks)
    except OperationError as exc:
        return _failed(fixed, out, str(exc))
    fixed.result = "applied"
    for problem in fixed.problems:
        out.write(f"verify: {problem}\n")
    if fixed.after_reboot:
        out.write(f"reboot the machine to finish fixing {', '.join(fixed.after_reboot)}, then run the doctor again\n")
    fixed_checks = [c for ids in selection.checks_by_fix.values() for c in ids if c not in fixed.after_reboot]
    fixed.rechecks = list(run_doctor(target, options, fixed_checks).results) if fixed_checks else []
    for res in fixed.rechecks:
        out.write(f"re-check {res.id}: {res.status}: {res.summary}\n")
    still = [r for r in fixed.rechecks if r.status in (WARN, FAIL)]
    fixed.exit_code = 2 if still or fixed.problems or selection.manual or fixed.unplannable else 0
    return fixed


def _failed(fixed: FixReport, out: TextIO, error: str) -> FixReport:
    out.write(f"fix failed: {error}\n")
    fixed.result, fixed.error, fixed.exit_code = "failed", error, 2
    return fixed
