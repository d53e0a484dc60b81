"""`llmtpu models`: the model table (data: doctor/models.toml) and what fits this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmtpu.clikit import local_root


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("models", help="list the LLM-TPU models and whether each fits this machine",
                                 description="The models of LLM-TPU's command table, what each needs, and "
                                             "whether it fits this machine's device memory.")
    parser.add_argument("--root", default="/", metavar="DIR", help="judge the machine in this sysroot folder")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def device_memory_mib(root: str) -> tuple[int | None, str]:
    """The memory a model can use on this machine (NPU heap, or a card's heap0) and where it was read."""
    from llmtpu.doctor.checks import DoctorOptions, Facts
    from llmtpu.doctor.facts import PCIE_DOCKER, PCIE_HOST, SOC_BOARD
    from llmtpu.target import LocalTarget

    f = Facts(LocalTarget(root), DoctorOptions())
    kind = f.kind.value
    if kind == SOC_BOARD and f.heaps.value:
        return f.heaps.value["npu"] >> 20, "NPU ion heap"
    if kind in (PCIE_HOST, PCIE_DOCKER):
        heaps = [chip.heap_bytes[0] for _, chip in f.chips if chip.heap_bytes]
        if heaps:
            return min(heaps) >> 20, "card heap0"
    return None, f"no device memory readable ({kind})"


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import load_models

    available, where = device_memory_mib(local_root(args.root))
    rows: list[dict[str, Any]] = []
    for model in load_models().values():
        fits = None if available is None else available >= model.npu_mib
        rows.append({"name": model.name, "family": model.family, "quant": model.quant,
                     "npu_mib": model.npu_mib, "estimate": model.estimate, "fits": fits, "dfss_path": model.file})
    if args.json:
        json.dump({"device_memory_mib": available, "source": where, "models": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LLM-TPU models ({where}: {available if available is not None else '?'} MiB)")
    for column in ("model", "quant", "needs MiB", "fits"):
        table.add_column(column)
    for row in rows:
        need = f"{row['npu_mib']}{' (est.)' if row['estimate'] else ''}"
        verdict = {None: "?", True: "[green]yes[/]", False: "[red]no[/]"}[row["fits"]]
        table.add_row(str(row["name"]), str(row["quant"]), need, verdict)
    Console().print(table)
    return 0
