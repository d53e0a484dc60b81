"""The two renderers of a doctor report: rich for people, JSON for machines. Never mixed."""

from __future__ import annotations

import json
from typing import IO

from llmtpu.doctor.checks import FAIL, OK, SKIP, WARN
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
