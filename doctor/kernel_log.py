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

from llmtpu.doctor.explain import Match, Matcher, redact_line, redact_lines
from llmtpu.doctor.facts import Observed
from llmtpu.target import Target, TargetError

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
