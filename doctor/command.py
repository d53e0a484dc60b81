"""`llmtpu doctor`: argument parsing and wiring; the work is in report.py and render.py."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from llmtpu.cli import UsageError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor", help="check a machine and say what to fix",
        description="Check a Sophgo BM1684X machine: ok / warn / fail / skip per check, with "
                    "evidence and the exact fix. Exit 0 all ok, 1 warnings, 2 a failure, 64 usage.",
    )
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="read the machine from this sysroot folder instead of /")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema llmtpu.doctor/1)")
    parser.add_argument("--only", nargs="+", default=[], metavar="ID", help="run only these checks")
    parser.add_argument("--model", default=None, help="model to size memory and disk for (default llama2-7b)")
    parser.add_argument("--models-dir", default="/data", metavar="DIR",
                        help="folder on the machine where bmodels are kept (default /data)")
    parser.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    parser.add_argument("--list-models", action="store_true", help="list the known models and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show evidence for every check")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import CHECKS, DEFAULT_MODEL, DoctorOptions, load_models

    if args.list_checks:
        for check in CHECKS:
            print(f"{check.id:20} {check.title}  [{check.source}]")
        return 0
    models = load_models()
    if args.list_models:
        for row in models.values():
            print(f"{row.name:18} {row.quant}  NPU {row.npu_mib} MiB{' (estimate)' if row.estimate else ''}")
        return 0
    known = {c.id for c in CHECKS}
    unknown = [i for i in args.only if i not in known]
    if unknown:
        raise UsageError(f"--only: unknown check {', '.join(unknown)}; `llmtpu doctor --list-checks` lists them")
    model_name = args.model or DEFAULT_MODEL
    if model_name not in models:
        raise UsageError(f"--model: unknown model {model_name!r}; `llmtpu doctor --list-models` lists them")
    if not args.models_dir.startswith("/"):
        raise UsageError(f"--models-dir: {args.models_dir!r} must be an absolute path on the machine")
    if not os.path.exists(args.root):
        raise UsageError(f"--root: {args.root} does not exist; give the folder that holds the machine's files")
    if not os.path.isdir(args.root):
        raise UsageError(f"--root: {args.root} is not a folder; give the folder that holds the machine's files")

    from llmtpu.doctor.report import run_doctor
    from llmtpu.target import LocalTarget

    target = LocalTarget(args.root)
    report = run_doctor(target, DoctorOptions(model=model_name, models_dir=args.models_dir), args.only)
    if args.json:
        from llmtpu.doctor.render import render_json

        render_json(report, sys.stdout)
    else:
        from llmtpu.doctor.render import render_human

        render_human(report, sys.stdout, verbose=args.verbose)
    return report.exit_code
