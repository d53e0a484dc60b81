"""The doctor across a fleet: a host x check matrix and a summary line for people, one JSON
document for machines (each host's report exactly as the single-machine ``--json`` gives it,
plus why a host could not be checked). The exit code is the worst host's; 3 when any host
could not be checked at all."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

from llmtpu import __version__
from llmtpu.clikit import Exit
from llmtpu.doctor.checks import CHECKS, FAIL, OK, SKIP, WARN
from llmtpu.doctor.report import Report
from llmtpu.fleet import DONE, HostResult
from llmtpu.inventory import describe

FLEET_SCHEMA = "llmtpu.doctor.fleet/1"

STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}

#: Short column headings for the matrix, in check order.
HEADINGS = {
    "machine.kind": "device", "kernel.date": "kernel", "driver.date": "driver", "sdk.version": "sdk",
    "chips.health": "chips", "devices.present": "nodes",
    "devices.access": "access", "libsophon.install": "libsophon", "libsophon.packages": "debs",
    "tpu.clocks": "clocks", "memory.heaps": "heaps", "memory.ram": "ram", "disk.models": "disk",
}

#: How the summary line names hosts whose worst check is this one.
NEEDS = {
    "machine.kind": "have no Sophgo device",
    "kernel.date": "need a newer SDK image",
    "driver.date": "need the driver update",
    "sdk.version": "need a newer SDK, libsophon or driver",
    "chips.health": "have a faulted chip",
    "devices.present": "miss device nodes",
    "devices.access": "cannot open the device nodes",
    "libsophon.install": "need libsophon installed",
    "libsophon.packages": "have broken or mismatched sophon debs",
    "tpu.clocks": "run reduced TPU clocks",
    "memory.heaps": "need a bigger NPU heap",
    "memory.ram": "are short of RAM",
    "disk.models": "need disk space for the model",
}

#: How the summary line names hosts that could not be checked.
NOT_CHECKED = {
    "unreachable": "unreachable",
    "auth-failed": "login refused",
    "host-key-unknown": "unknown host key",
    "host-key-changed": "HOST KEY CHANGED",
    "host-key-revoked": "host key revoked",
    "timed-out": "timed out",
    "error": "failed",
}


def _report(result: HostResult[Report]) -> Report | None:
    return result.value if result.status == DONE else None


def host_label(result: HostResult[Report]) -> str:
    """What a host counts as in the summary: ok, the need of its worst check, or its error."""
    report = _report(result)
    if report is None:
        return NOT_CHECKED.get(result.status, result.status)
    order = [c.id for c in CHECKS]
    for status in (FAIL, WARN):
        worst = sorted((r for r in report.results if r.status == status),
                       key=lambda r: order.index(r.id) if r.id in order else len(order))
        if worst:
            need = NEEDS.get(worst[0].id, f"{status} {worst[0].id}")
            return need if status == FAIL else f"{need} (warning)"
    return "ok"


def summary_line(results: Sequence[HostResult[Report]]) -> str:
    """``37 ok, 2 need the driver update, 1 unreachable``: ok first, then needs, then errors."""
    labels = Counter(host_label(r) for r in results)
    errors = set(NOT_CHECKED.values())
    ordered = sorted(labels, key=lambda label: (label != "ok", label in errors, -labels[label], label))
    return ", ".join(f"{labels[label]} {label}" for label in ordered) or "no hosts"


def fleet_exit_code(results: Sequence[HostResult[Report]]) -> int:
    """The worst host: 3 if any host could not be checked, else the worst report's 0/1/2."""
    if any(_report(r) is None for r in results):
        return Exit.UNREACHABLE
    return max((r.value.exit_code for r in results if r.value is not None), default=0)


def fleet_json(results: Sequence[HostResult[Report]]) -> dict[str, Any]:
    hosts = []
    for result, where in zip(results, describe(r.spec for r in results), strict=True):
        report = _report(result)
        hosts.append({
            **where,
            "status": "checked" if report is not None else result.status,
            "error": result.error,
            "seconds": round(result.seconds, 3),
            "round_trips": result.round_trips,
            "host_key": result.host_key,
            "report": report.to_json() if report is not None else None,
        })
    verdicts = Counter(r.value.verdict for r in results if r.value is not None and r.status == DONE)
    return {
        "schema": FLEET_SCHEMA,
        "tool_version": __version__,
        "summary": {
            "hosts": len(results),
            "checked": sum(verdicts.values()),
            "verdicts": {v: verdicts.get(v, 0) for v in (OK, WARN, FAIL)},
            "not_checked": dict(Counter(r.status for r in results if _report(r) is None)),
            "text": summary_line(results),
        },
        "exit_code": fleet_exit_code(results),
        "hosts": hosts,
    }


def render_fleet_json(results: Sequence[HostResult[Report]], out: IO[str]) -> None:
    json.dump(fleet_json(results), out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_fleet_human(results: Sequence[HostResult[Report]], out: IO[str], verbose: bool = False) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False, soft_wrap=False)
    ids = [c.id for c in CHECKS if any(
        r.value is not None and any(x.id == c.id for x in r.value.results) for r in results)] or [c.id for c in CHECKS]
    table = Table(title=f"llmtpu doctor: {len(results)} hosts", show_lines=False)
    table.add_column("host", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    for check_id in ids:
        table.add_column(HEADINGS.get(check_id, check_id), no_wrap=True, justify="center")
    table.add_column("verdict", no_wrap=True)
    for result in results:
        report = _report(result)
        if report is None:
            label = NOT_CHECKED.get(result.status, result.status)
            table.add_row(result.spec.name, "", *("·" for _ in ids), Text(label, style="bold magenta"))
            continue
        by_id = {r.id: r.status for r in report.results}
        cells = [Text({FAIL: "FAIL", SKIP: "-"}.get(by_id.get(i, SKIP), by_id.get(i, SKIP)),
                      style=STYLE[by_id.get(i, SKIP)]) for i in ids]
        table.add_row(result.spec.name, report.machine_kind, *cells, Text(report.verdict, style=STYLE[report.verdict]))
    if not console.is_terminal:  # a log or a pipe: the whole matrix, however wide
        wide = console.options.update_width(1000)
        console.width = max(console.width, Measurement.get(console, wide, table).maximum)
    console.print(table)
    for result in results:
        report = _report(result)
        if report is None:
            console.print(Text(f"{result.spec.name}: {result.error}", style="magenta"), soft_wrap=True)
            continue
        for res in report.results:
            if res.status in (WARN, FAIL) or (verbose and res.status != SKIP):
                line = Text(f"{result.spec.name}: {res.id} {res.status}: {res.summary}", style=STYLE[res.status])
                if res.fix is not None and res.status in (WARN, FAIL):
                    line.append(f"  -> {res.fix.summary}", style="cyan")
                console.print(line, soft_wrap=True)
                if verbose and res.fix is not None and res.status in (WARN, FAIL):
                    for command in res.fix.commands:
                        console.print(Text(f"    $ {command}", style="cyan"), soft_wrap=True)
    needs_fix = any(r.value is not None and r.value.verdict != OK for r in results if r.status == DONE)
    if needs_fix and not verbose:
        console.print(Text("add -v for the exact fix commands (or --json)", style="dim"))
    exit_code = fleet_exit_code(results)
    style = {0: STYLE[OK], 1: STYLE[WARN]}.get(exit_code, STYLE[FAIL])
    console.print(Text(f"summary: {summary_line(results)}", style=style))
