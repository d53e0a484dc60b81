"""The renderers of a doctor report: rich for people, JSON for machines (never mixed), and the
per-card view."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

from llmtpu.doctor.checks import FAIL, OK, SKIP, WARN, ChipRow
from llmtpu.doctor.report import Report

STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


def render_json(report: Report, out: IO[str]) -> None:
    json.dump(report.to_json(), out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_human(report: Report, out: IO[str], verbose: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False, soft_wrap=False)
    where = report.host if report.root == "/" else f"{report.host} (root {report.root})"
    table = Table(title=f"llmtpu doctor: {where}, {report.machine_kind}", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary")
    table.add_column("fix")
    for res in report.results:
        summary = Text(res.summary)
        if verbose or res.status in (WARN, FAIL):
            for item in res.evidence:
                summary.append(f"\n{item.source}: {item.value}", style="dim")
        fix = res.fix.summary if res.fix is not None and res.status in (WARN, FAIL) else ""
        table.add_row(res.id, Text(res.status, style=STYLE[res.status]), summary, fix)
    console.print(table)
    # Commands go below the table, unwrapped, so they can be copied whole.
    for res in report.results:
        if res.fix is None or res.status not in (WARN, FAIL) or not res.fix.commands:
            continue
        console.print(Text(f"fix for {res.id} ({res.fix.id}): {res.fix.summary}", style=STYLE[res.status]))
        for command in res.fix.commands:
            console.print(Text(f"  $ {command}", style="cyan"), soft_wrap=True)
    counts = report.counts
    line = Text(f"verdict: {report.verdict}", style=STYLE[report.verdict])
    line.append(f"  ({counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail, {counts[SKIP]} skip)")
    console.print(line)


def render_cards(rows: Sequence[ChipRow], out: IO[str]) -> None:
    """``llmtpu doctor --cards``: one line per chip, a Fault in red, what could not be read below."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False, soft_wrap=False)
    if not rows:
        console.print("no Sophgo cards or chips found on this machine")
        return
    table = Table(title="cards and chips", show_lines=False)
    for column in ("card", "chip", "board", "serial", "status", "temp", "TPU clock", "heap", "NPU use"):
        table.add_column(column, no_wrap=True)

    def shown(value: object, unit: str = "") -> str:
        return "?" if value is None else f"{value}{unit}"

    for row in rows:
        status = Text(shown(row.status) if row.card else "n/a",
                      style={"fault": STYLE[FAIL], "active": STYLE[OK]}.get((row.status or "").lower(), ""))
        heap = shown(row.heap_mib, " MiB")
        if row.heap_used_mib is not None:
            heap = f"{row.heap_used_mib} of {heap}"
        table.add_row(row.card or "-", row.chip, shown(row.board_type), shown(row.serial), status,
                      shown(row.temp_c, " C"), shown(row.tpu_mhz, " MHz"), heap, shown(row.npu_usage_pct, " %"))
    if not console.is_terminal:  # a log or a pipe: whole rows, however wide
        from rich.measure import Measurement

        wide = console.options.update_width(1000)
        console.width = max(console.width, Measurement.get(console, wide, table).maximum)
    console.print(table)
    for row in rows:
        for problem in row.problems:
            console.print(Text(f"{row.chip}: not read: {problem}", style="dim"), soft_wrap=True)
