"""`llmtpu metrics` and `llmtpu monitor install|undo`: the fleet watched between runs.

``llmtpu metrics --output FILE`` writes the doctor's findings in node_exporter's textfile format
(atomically); with ``--hosts``/``--inventory`` one file holds every machine, labelled ``host``.
``llmtpu monitor install`` puts a systemd timer on the machine (or sysroot) that refreshes the
file for node_exporter's textfile collector; ``--dry-run`` shows the plan, ``monitor undo``
reverts it from the journal.

Exit codes (llmtpu.clikit.Exit): 0 written (whatever the checks found: that is in the file),
2 refused or a change failed, 3 (fleet) a host could not be read, 64 usage.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

from llmtpu.clikit import Exit, UsageError, local_root, refuse_root_with_hosts
from llmtpu.hosts_command import add_fleet_arguments


def add_parser(commands: Any) -> None:
    metrics = commands.add_parser("metrics", help="write the doctor's findings as Prometheus metrics",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    metrics.add_argument("--root", default="/", metavar="DIR", help="read the machine from this sysroot folder")
    metrics.add_argument("--output", "-o", metavar="FILE",
                         help="write here atomically (a .prom file in node_exporter's textfile folder); "
                              "default: standard output")
    metrics.add_argument("--model", default=None, help="model to size memory and disk for (default llama2-7b)")
    metrics.add_argument("--models-dir", default="/data", metavar="DIR", help="where bmodels live (default /data)")
    add_fleet_arguments(metrics)
    metrics.set_defaults(run=run_metrics)

    monitor = commands.add_parser("monitor", help="install a systemd timer that refreshes the metrics file",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    monitor.add_argument("action", choices=("install", "undo"))
    monitor.add_argument("--root", default="/", metavar="DIR", help="act on the machine in this sysroot folder")
    monitor.add_argument("--textfile-dir", metavar="DIR", default=None,
                         help="node_exporter's --collector.textfile.directory "
                              "(default /var/lib/prometheus/node-exporter)")
    monitor.add_argument("--interval", type=int, default=None, metavar="S", help="seconds between refreshes (300)")
    monitor.add_argument("--llmtpu", metavar="PATH", default=None,
                         help="the llmtpu executable on the machine (default: this one)")
    monitor.add_argument("--model", default=None, help="model the memory and disk checks size for")
    monitor.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    monitor.add_argument("--yes", action="store_true", help="apply without asking")
    monitor.set_defaults(run=run_monitor)


def run_metrics(args: argparse.Namespace) -> int:
    from llmtpu.doctor.command import doctor_options
    from llmtpu.metrics import Metrics, add_unreachable, collect, merge, write_textfile

    options = doctor_options(args.model, args.models_dir)
    output = args.output
    if output is not None:
        folder = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(folder):
            raise UsageError(f"--output: folder {folder} does not exist; create node_exporter's textfile folder")
        if not output.endswith(".prom"):
            raise UsageError(f"--output: {output} must end in .prom (node_exporter's textfile collector "
                             "reads only those)")
    code = 0
    if args.inventory or args.hosts:
        from llmtpu.fleet import run_on_hosts
        from llmtpu.hosts_command import hosts_from_args

        refuse_root_with_hosts(args.root)
        specs, ssh_options = hosts_from_args(args)
        started = time.time()
        results = run_on_hosts(specs, lambda target: collect(target, options), ssh_options, parallel=args.parallel)
        parts = []
        for res in results:
            if res.checked and res.value is not None:
                parts.append(res.value)
            else:
                part = Metrics()
                add_unreachable(part, res.spec.name, started)
                parts.append(part)
                print(f"llmtpu: {res.spec.name}: {res.error or res.status}", file=sys.stderr)
                code = Exit.UNREACHABLE
        metrics = merge(parts)
    else:
        if args.limit:
            raise UsageError("--limit selects hosts of --inventory or --hosts; give one of them")
        from llmtpu.target import LocalTarget

        metrics = collect(LocalTarget(local_root(args.root)), options)
    text = metrics.text()
    if output is None:
        sys.stdout.write(text)
        return code
    try:
        write_textfile(output, text)
    except OSError as exc:
        print(f"llmtpu: error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    return code


def _settings(args: argparse.Namespace) -> Any:
    from llmtpu.provision.monitor import DEFAULT_INTERVAL, DEFAULT_TEXTFILE_DIR, MonitorSettings
    from llmtpu.provision.operation import OperationError

    executable = args.llmtpu or shutil.which("llmtpu") or os.path.join(os.path.dirname(sys.executable), "llmtpu")
    try:
        return MonitorSettings(llmtpu=os.path.abspath(executable) if args.llmtpu is None else executable,
                               textfile_dir=args.textfile_dir or DEFAULT_TEXTFILE_DIR,
                               interval=args.interval if args.interval is not None else DEFAULT_INTERVAL,
                               model=args.model or "llama2-7b")
    except OperationError as exc:
        raise UsageError(str(exc)) from exc


def run_monitor(args: argparse.Namespace) -> int:
    from llmtpu.provision.monitor import MonitorInstall, pending_record
    from llmtpu.provision.operation import ConfirmationRefused, Journal, OperationError, confirm
    from llmtpu.target import LocalTarget

    target = LocalTarget(local_root(args.root))
    try:
        if args.action == "undo":
            entry = pending_record(target)
            if entry is None:
                print(f"{target.name}: nothing to undo (no monitor.install record under {target.root})")
                return 0
            operation = MonitorInstall()
            plan = operation.plan_undo(target, entry)
            print("\n".join(plan.lines()))
            if args.dry_run or not confirm([plan], args.yes):
                return 0
            operation.undo(target, entry)
            print("monitor.install undone")
            return 0
        operation = MonitorInstall(_settings(args))
        plan = operation.plan(target)
        print("\n".join(plan.lines()))
        if args.dry_run or plan.nothing_to_do:
            return 0
        if not confirm([plan], args.yes):
            return Exit.FAILED
        operation.apply(target, plan, Journal(target))
        problems = operation.verify(target)
    except ConfirmationRefused as exc:
        raise UsageError(str(exc)) from exc
    except OperationError as exc:
        print(f"llmtpu: error: {exc}", file=sys.stderr)
        return Exit.FAILED
    for problem in problems:
        print(f"llmtpu: not in effect: {problem}", file=sys.stderr)
    if problems:
        return Exit.FAILED
    print("monitor.install: done and verified; `llmtpu monitor undo` goes back")
    return 0
