"""Run the checks on one target and shape the result: the data both renderers read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llmtpu import __version__
from llmtpu.clikit import Exit
from llmtpu.doctor import facts
from llmtpu.doctor.checks import (
    CHECKS,
    FAIL,
    OK,
    SKIP,
    STATUS_ORDER,
    WARN,
    CheckResult,
    ChipRow,
    DoctorOptions,
    Facts,
    chip_rows,
    run_check,
)
from llmtpu.target import Target

#: Version of the --json document. Bump the major on any incompatible change.
JSON_SCHEMA = "llmtpu.doctor/1"

#: Exit codes of `llmtpu doctor` (documented in the README).


@dataclass(frozen=True)
class Report:
    host: str
    root: str
    machine_kind: str
    results: tuple[CheckResult, ...]
    chips: tuple[ChipRow, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        counts = {OK: 0, WARN: 0, FAIL: 0, SKIP: 0}
        for res in self.results:
            counts[res.status] += 1
        return counts

    @property
    def verdict(self) -> str:
        worst = max((STATUS_ORDER[r.status] for r in self.results), default=0)
        return {0: OK, 1: WARN, 2: FAIL}[worst]

    @property
    def exit_code(self) -> int:
        return {OK: Exit.OK, WARN: Exit.WARN, FAIL: Exit.FAILED}[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": JSON_SCHEMA,
            "tool_version": __version__,
            "host": self.host,
            "root": self.root,
            "machine_kind": self.machine_kind,
            "verdict": self.verdict,
            "counts": self.counts,
            "checks": [check_json(r) for r in self.results],
            "chips": chips_json(self.chips),
        }


def check_json(res: CheckResult) -> dict[str, Any]:
    return {
        "id": res.id,
        "title": res.title,
        "status": res.status,
        "summary": res.summary,
        "evidence": [{"source": e.source, "value": e.value} for e in res.evidence],
        "fix": None if res.fix is None else {
            "id": res.fix.id, "summary": res.fix.summary, "commands": list(res.fix.commands),
        },
        "rule_source": res.source,
    }


def chips_json(rows: Sequence[ChipRow]) -> list[dict[str, Any]]:
    """The per-chip view for ``--json`` (an additive field: schema llmtpu.doctor/1 stays)."""
    return [asdict(row) | {"problems": list(row.problems)} for row in rows]


def run_doctor(target: Target, options: DoctorOptions, only: Sequence[str] = (),
               shared: Facts | None = None) -> Report:
    """Run the checks; pass ``shared`` to keep using the facts read (the support report does)."""
    target.prefetch(facts.FACT_PATHS)
    shared = shared or Facts(target, options)
    selected = [c for c in CHECKS if not only or c.id in only]
    results = tuple(run_check(c, shared) for c in selected)
    return Report(target.name, target.root, shared.kind.value or facts.NO_DEVICE, results,
                  tuple(chip_rows(shared)) if not only else ())
