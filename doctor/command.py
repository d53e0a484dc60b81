"""`llmtpu doctor`: argument parsing and wiring; the work is in report.py and render.py."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from llmtpu.clikit import UsageError, local_root, refuse_root_with_hosts
from llmtpu.hosts_command import add_fleet_arguments
from llmtpu.provision.registry import add_debs_source_arguments, debs_source_from_args

if TYPE_CHECKING:
    from llmtpu.doctor.checks import DoctorOptions


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor", help="check a machine and say what to fix",
        description="Check a Sophgo BM1684X machine: ok / warn / fail / skip per check, with "
                    "evidence and the exact fix. Exit 0 all ok, 1 warnings, 2 a failure, 64 usage.",
    )
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="read the machine from this sysroot folder instead of /")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema llmtpu.doctor/1)")
    parser.add_argument("--cards", action="store_true",
                        help="also show each card and chip: status, temperature, heap and use, clock, board, serial")
    parser.add_argument("--only", nargs="+", default=[], metavar="ID", help="run only these checks")
    parser.add_argument("--model", default=None, help="model to size memory and disk for (default llama2-7b)")
    parser.add_argument("--models-dir", default="/data", metavar="DIR",
                        help="folder on the machine where bmodels are kept (default /data)")
    parser.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    parser.add_argument("--list-models", action="store_true", help="list the known models and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show evidence for every check")
    smoke = parser.add_argument_group("inference smoke test")
    smoke.add_argument("--smoke", action="store_true", help="run a real inference through the engine (smoke.inference)")
    smoke.add_argument("--engine", metavar="PATH", help="engine binary on the machine (default: llmtpu engine build's)")
    smoke.add_argument("--lib-dir", metavar="DIR",
                       help="folder with libbmrt.so (default /opt/sophon/libsophon-current/lib)")
    smoke.add_argument("--smoke-model", metavar="BMODEL", help="bmodel to run (default: the tiny test model, "
                                                                "checked against its reference tokens)")
    smoke.add_argument("--smoke-timeout", type=float, default=120.0, metavar="S",
                       help="seconds before the engine counts as hung (default 120)")
    fix = parser.add_argument_group("fixing")
    fix.add_argument("--fix", action="store_true", help="plan the fixes for failing checks, ask, apply, re-check")
    fix.add_argument("--yes", action="store_true", help="with --fix: apply without asking")
    add_debs_source_arguments(fix)
    add_fleet_arguments(parser)
    parser.set_defaults(run=run)


def doctor_options(model: str | None, models_dir: str, **extra: Any) -> DoctorOptions:
    """DoctorOptions from --model and --models-dir, checked (one usage line naming the input)."""
    from llmtpu.doctor.checks import DEFAULT_MODEL, DoctorOptions, load_models

    name = model or DEFAULT_MODEL
    if name not in load_models():
        raise UsageError(f"--model: unknown model {name!r}; `llmtpu doctor --list-models` lists them")
    if not models_dir.startswith("/"):
        raise UsageError(f"--models-dir: {models_dir!r} must be an absolute path on the machine")
    return DoctorOptions(model=name, models_dir=models_dir, **extra)


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import CHECKS, load_models

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
    options = doctor_options(args.model, args.models_dir, smoke=args.smoke, engine=args.engine,
                             smoke_model=args.smoke_model, lib_dir=args.lib_dir, smoke_timeout=args.smoke_timeout)
    if args.inventory or args.hosts:
        refuse_root_with_hosts(args.root)
        if args.fix:
            raise UsageError("--fix works on one machine; for many, run a playbook: "
                             "`llmtpu play fresh-pcie-host --inventory FILE --yes`")
        return run_fleet(args, options)
    if (args.debs or args.mirror or args.deb_version) and not args.fix:
        raise UsageError("--debs, --mirror and --deb-version say where --fix gets the debs: add --fix")
    if args.limit:
        raise UsageError("--limit selects hosts of --inventory or --hosts; give one of them")
    local_root(args.root)

    from llmtpu.doctor.report import run_doctor
    from llmtpu.target import LocalTarget

    target = LocalTarget(args.root)
    if args.fix:
        return run_fix(args, target, options)
    report = run_doctor(target, options, args.only)
    if args.json:
        from llmtpu.doctor.render import render_json

        render_json(report, sys.stdout)
    else:
        from llmtpu.doctor.render import render_cards, render_human

        render_human(report, sys.stdout, verbose=args.verbose)
        if args.cards:
            render_cards(list(report.chips), sys.stdout)
    return report.exit_code


def run_fix(args: argparse.Namespace, target: Any, options: DoctorOptions) -> int:
    """`--fix`: provision/fixes.py plans every fix, asks once, applies, re-runs the checks.

    With --json the progress goes to stderr and stdout carries one llmtpu.doctor.fix/1 document.
    """
    import json

    from llmtpu.provision.debs import ApplyInterrupted, RefusedInput
    from llmtpu.provision.fixes import doctor_fix
    from llmtpu.provision.operation import ConfirmationRefused, OperationError
    from llmtpu.target import TargetError

    sources = debs_source_from_args(args)
    try:
        fixed = doctor_fix(target, options, assume_yes=args.yes, out=sys.stderr if args.json else sys.stdout,
                           sources=sources, only=args.only, argv=sys.argv[1:])
    except ApplyInterrupted as exc:  # the message holds the way back
        print(f"llmtpu: {exc}", file=sys.stderr)
        return 130
    except (ConfirmationRefused, RefusedInput) as exc:
        raise UsageError(str(exc)) from exc
    except (OperationError, TargetError, OSError) as exc:  # a refused file access too: one line
        print(f"llmtpu: fix failed: {exc}", file=sys.stderr)
        return 2
    if args.json and fixed.result != "rerun with sudo":  # the sudo run prints its own document
        json.dump(fixed.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return fixed.exit_code


def run_fleet(args: argparse.Namespace, options: DoctorOptions) -> int:
    from rich.console import Console

    from llmtpu.doctor.fleet_render import fleet_exit_code, render_fleet_human, render_fleet_json
    from llmtpu.doctor.report import run_doctor
    from llmtpu.fleet import live_progress, run_on_hosts
    from llmtpu.hosts_command import hosts_from_args

    specs, ssh_options = hosts_from_args(args)
    with live_progress(len(specs), Console(stderr=True)) as (on_start, on_done):
        results = run_on_hosts(specs, lambda target: run_doctor(target, options, args.only), ssh_options,
                               parallel=args.parallel, on_start=on_start, on_done=on_done)
    if args.json:
        render_fleet_json(results, sys.stdout)
    else:
        render_fleet_human(results, sys.stdout, verbose=args.verbose)
    return fleet_exit_code(results)
