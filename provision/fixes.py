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
from llmtpu.provision.operation import Journal, OperationError, Plan, confirm
from llmtpu.provision.registry import FACTORIES
from llmtpu.target import Target


@dataclass(frozen=True)
class FixSources:
    """Where fixes get the files they install: a folder of debs, a mirror, or Sophgo's dfss."""

    debs_dir: str | None = None
    mirror: str | None = None
    version: str | None = None
    download_dir: str = field(default_factory=lambda: os.path.expanduser("~/.cache/llmtpu/downloads"))

    def as_args(self) -> dict[str, Any]:
        """The arguments the registry's factories take."""
        return {"debs_dir": self.debs_dir, "mirror": self.mirror, "version": self.version,
                "download_dir": self.download_dir}


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
               argv: Sequence[str] | None = None) -> int:
    """`llmtpu doctor --fix`: plan every fix, confirm once, apply, verify, re-run the fixed checks.

    ``argv`` is the command line to re-run through ``sudo -n`` when root is needed and the
    user is not root. Exit code: 0 every fixed check now ok (or nothing to fix), 2 otherwise.
    """
    sources = sources or FixSources()
    report = run_doctor(target, options, only)
    selection = select_fixes(report.results)
    for res in selection.manual:
        fix_id = res.fix.id if res.fix else "none"
        out.write(f"{res.id}: {res.status}: no automatic fix ({fix_id}); do it by hand: "
                  f"{res.fix.summary if res.fix else res.summary}\n")
    if not selection.checks_by_fix:
        out.write("nothing llmtpu can fix automatically\n")
        return 0 if not selection.manual else 2
    operations = [FACTORIES[fix_id](target, sources.as_args()) for fix_id in selection.checks_by_fix]
    plans = [op.plan(target) for op in operations]
    for fix_id, plan in zip(selection.checks_by_fix, plans, strict=True):
        out.write(f"for {', '.join(selection.checks_by_fix[fix_id])}:\n")
        out.write("\n".join(plan.lines()) + "\n")
    if all(p.nothing_to_do for p in plans):
        out.write("nothing to do\n")
        return 2 if selection.manual else 0
    if needs_sudo(plans):
        if not confirm(plans, assume_yes, stdin, out):
            out.write("not applied\n")
            return 2
        if argv is None:
            raise OperationError("root is needed to change this machine: run the same command as root")
        return rerun_with_sudo(argv)
    if not confirm(plans, assume_yes, stdin, out):
        out.write("not applied\n")
        return 2
    journal = Journal(target)
    problems: list[str] = []
    after_reboot: list[str] = []
    for fix_id, operation, plan in zip(selection.checks_by_fix, operations, plans, strict=True):
        if plan.nothing_to_do:
            continue
        operation.apply(target, plan, journal)
        problems.extend(f"{operation.id}: {p}" for p in operation.verify(target))
        if plan.reboot_required:
            after_reboot.extend(selection.checks_by_fix[fix_id])
    for problem in problems:
        out.write(f"verify: {problem}\n")
    if after_reboot:
        out.write(f"reboot the machine to finish fixing {', '.join(after_reboot)}, then run the doctor again\n")
    fixed_checks = [c for ids in selection.checks_by_fix.values() for c in ids if c not in after_reboot]
    after = run_doctor(target, options, fixed_checks)
    for res in after.results:
        out.write(f"re-check {res.id}: {res.status}: {res.summary}\n")
    still = [r for r in after.results if r.status in (WARN, FAIL)]
    return 2 if still or problems or selection.manual else 0
