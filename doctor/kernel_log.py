"""The kernel log as a fact, and the doctor check that finds known driver errors in it.

The libsophon driver reports firmware, timeout and DRAM faults only in the kernel log, so a
machine can pass every file check and still have a chip that stopped answering. The log is
read through the Target: a sysroot's recorded ``/_cmd/dmesg.txt``, or ``dmesg`` on the machine
(which needs root where ``kernel.dmesg_restrict`` is 1; then the check says why it could not
look, never ok).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmtpu.doctor.explain import (
    DoctorEvidence,
    Match,
    Matcher,
    SignatureFix,
    default_matcher,
    group_by_signature,
    redact_line,
    redact_lines,
)
from llmtpu.doctor.facts import Observed
from llmtpu.target import Target, TargetError

if TYPE_CHECKING:
    from llmtpu.doctor.checks import CheckResult, Facts, Fix

CHECK_ID = "kernel.log"
RECORDED = "/_cmd/dmesg.txt"
#: Lines printed by the Sophgo drivers (bmsophon on PCIe, bmtpu on SoC) and their helpers.
#: Searched in the lower-cased line (a case-insensitive regex costs several times more per line).
DRIVER_LINE = re.compile(r"bm-?sophon|bmdrv|bm-?tpu|bm1684|sophon|a53lite|jpudrv|vpudrv|\bion\b")
#: At most this many log lines go into the check's evidence.
EVIDENCE_LINES = 10


def read_kernel_log(target: Target) -> Observed[str]:
    """The kernel ring buffer as text, or why it could not be read."""
    recorded = target.recorded_output("dmesg")
    if recorded is not None:
        return Observed(recorded, RECORDED, f"{len(recorded.splitlines())} lines")
    if target.is_sysroot:
        return Observed(None, RECORDED, None, "missing")
    try:
        result = target.run(["dmesg"], timeout=15)
    except TargetError as exc:
        return Observed(None, "dmesg", None, f"unreadable: {exc}")
    if not result.ok:
        why = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
        reason = why[0] if why else f"exit status {result.returncode}"
        return Observed(None, "dmesg", None, f"unreadable: {reason} (run as root?)")
    text = result.text()
    return Observed(text, "dmesg", f"{len(text.splitlines())} lines")


@dataclass(frozen=True)
class KernelLogScan:
    """What the kernel log says: the driver's own lines, and known errors anywhere in it.

    Matched lines are masked at once (they go into the doctor's evidence); driver lines only
    when asked for (a support report), so the doctor's check does not pay for masking them.
    """

    lines: int
    driver_line_numbers: tuple[int, ...]
    matches: tuple[Match, ...]
    _unmasked: tuple[str, ...] = field(repr=False, default=())

    @property
    def driver_lines(self) -> list[tuple[int, str]]:
        """The Sophgo driver's lines, secrets masked."""
        return [(n, redact_line(self._unmasked[n - 1])) for n in self.driver_line_numbers]

    @property
    def relevant_lines(self) -> list[tuple[int, str]]:
        """Driver lines plus matched lines, in log order: what a support report keeps."""
        by_number = dict(self.driver_lines)
        by_number.update((m.line_no, m.text) for m in self.matches)
        return sorted(by_number.items())


def scan_kernel_log(text: str, matcher: Matcher) -> KernelLogScan:
    """Driver lines and known errors, secrets masked: what it finds goes into JSON and reports.

    Lines are matched as read and only the lines kept are masked, so a long log costs one
    pre-filter search per line.
    """
    lines = text.splitlines()
    if "-----BEGIN" in text:  # a key block spans lines: mask them all before anything is kept
        lines = redact_lines(lines)
    driver = tuple(n for n, line in enumerate(lines, 1) if DRIVER_LINE.search(line.lower()))
    matches = tuple(Match(m.line_no, redact_line(m.text), m.signature) for m in matcher.scan(lines))
    return KernelLogScan(len(lines), driver, matches, tuple(lines))


def doctor_evidence(f: Facts) -> DoctorEvidence:
    """What the other checks find on this machine: it decides which fix a known error gets."""
    from llmtpu.doctor.checks import CHECKS, run_check

    results = [run_check(c, f) for c in CHECKS if c.id not in (CHECK_ID, "smoke.inference")]
    origin = f"the sysroot {f.target.root}" if f.target.is_sysroot else f.target.name
    return DoctorEvidence.from_results(f.kind.value, results, origin)


def as_fix(fix: SignatureFix) -> Fix:
    from llmtpu.doctor.checks import Fix

    return Fix(fix.id, fix.summary, fix.commands)


def check_kernel_log(f: Facts) -> CheckResult:
    # checks.py imports this module to register the check, so its names are imported here.
    from llmtpu.doctor.checks import FAIL, OK, SKIP, WARN, Evidence, ev, result

    observed = f.kernel_log
    if observed.value is None:
        if observed.problem == "missing":
            return result(CHECK_ID, SKIP, f"kernel log not recorded in this sysroot ({RECORDED})", [ev(observed)])
        return result(CHECK_ID, WARN, f"kernel log not read: {observed.problem}", [ev(observed)])
    scan = scan_kernel_log(observed.value, default_matcher())
    if not scan.matches:
        return result(CHECK_ID, OK, f"no known error in {scan.lines} kernel-log lines "
                                    f"({len(scan.driver_line_numbers)} from the Sophgo driver)", [ev(observed)])
    evidence = doctor_evidence(f)
    groups = group_by_signature(list(scan.matches))
    failing = [sig for sig, _ in groups if sig.severity == "fail"]
    first = failing[0] if failing else groups[0][0]
    evidence_lines = [Evidence(f"dmesg line {m.line_no}", m.text) for m in scan.matches[:EVIDENCE_LINES]]
    evidence_lines += [Evidence(f"also {sig.id}", f"fix {sig.fix_for(evidence).id}: {sig.fix_for(evidence).summary}")
                       for sig, _ in groups if sig is not first]
    names = ", ".join(sig.id for sig, _ in groups)
    summary = f"{len(groups)} known error(s) in the kernel log: {names}. {first.id}: {first.cause}"
    return result(CHECK_ID, FAIL if failing else WARN, summary, evidence_lines, as_fix(first.fix_for(evidence)))
