"""`llmtpu report -o FILE.tar.gz`: argument checks and wiring; the work is in support_report.py.

Exit 0 when the archive is written (whatever the doctor found: the report is the product),
64 on a usage error (bad option, output exists without --force, unreadable --log).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from llmtpu.clikit import UsageError, local_root, refuse_root_with_hosts

if TYPE_CHECKING:
    from llmtpu.doctor.support_report import EngineLog

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "report", help="write a support archive for an LLM-TPU issue",
        description="Collect the doctor's results, known error lines, kernel-log lines of the "
                    "Sophgo driver, versions and an optional engine log into one .tar.gz whose "
                    "summary.md fills LLM-TPU's issue template. Never collects keys, passwords, "
                    "the environment or home-directory files. Exit 0 written, 64 usage.",
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE.tar.gz", help="the archive to write")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="read the machine from this sysroot folder instead of /")
    parser.add_argument("--log", metavar="FILE", help="an engine or demo log to include (secrets masked)")
    parser.add_argument("--llm-tpu", metavar="DIR",
                        help="an LLM-TPU checkout on the machine: its commit id and date go in the report")
    parser.add_argument("--model", default=None, help="model the doctor sizes memory and disk for")
    parser.add_argument("--models-dir", default="/data", metavar="DIR",
                        help="folder on the machine where bmodels are kept (default /data)")
    from llmtpu.hosts_command import add_fleet_arguments

    add_fleet_arguments(parser)
    parser.set_defaults(run=run)


def host_output(out: str, host: str) -> str:
    """FILE.tar.gz -> FILE-<host>.tar.gz: one archive per host, named so they sort together."""
    suffix = next(s for s in ARCHIVE_SUFFIXES if out.endswith(s))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)
    return f"{out[:-len(suffix)]}-{safe}{suffix}"


def _output(path: str, force: bool) -> str:
    if not path.endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"-o: {path} must end in .tar.gz or .tgz")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"-o: folder {folder} does not exist; create it or write elsewhere")
    if os.path.isdir(path):
        raise UsageError(f"-o: {path} is a folder; give a file name ending in .tar.gz")
    if os.path.lexists(path) and not force:
        raise UsageError(f"-o: {path} exists; add --force to replace it")
    return path


def _engine_log(path: str) -> EngineLog:
    from llmtpu.doctor.support_report import ENGINE_LOG_LIMIT, EngineLog

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            truncated = size > ENGINE_LOG_LIMIT
            if truncated:
                handle.seek(size - ENGINE_LOG_LIMIT)
            data = handle.read(ENGINE_LOG_LIMIT)
    except FileNotFoundError as exc:
        raise UsageError(f"--log: {path}: no such file; give the path of the engine's log") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"--log: {path} is a folder; give the path of the engine's log file") from exc
    except OSError as exc:
        raise UsageError(f"--log: {path}: cannot read: {exc.strerror or exc}") from exc
    return EngineLog(os.path.basename(path), data.decode("utf-8", errors="replace"), truncated)


def run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.command import doctor_options

    out = _output(args.output, args.force)
    local_root(args.root)
    options = doctor_options(args.model, args.models_dir)
    engine_log = _engine_log(args.log) if args.log else None

    from llmtpu.doctor.support_report import ArchiveExists, collect_report, write_archive
    from llmtpu.target import LocalTarget

    if args.inventory or args.hosts:
        refuse_root_with_hosts(args.root)
        return run_hosts(args, out, options, engine_log)
    target = LocalTarget(args.root)
    llm_tpu = args.llm_tpu
    if llm_tpu is not None:
        if not llm_tpu.startswith("/"):
            if target.is_sysroot:
                raise UsageError(f"--llm-tpu: {llm_tpu!r} must be an absolute path on the machine")
            llm_tpu = os.path.abspath(llm_tpu)
        if not target.exists(llm_tpu):
            raise UsageError(f"--llm-tpu: {llm_tpu} does not exist on the machine; give the LLM-TPU checkout folder")
    report = collect_report(target, options, engine_log, llm_tpu)
    try:
        size = write_archive(report, out, force=args.force)
    except ArchiveExists as exc:
        raise UsageError(f"-o: {out} appeared while collecting; add --force to replace it") from exc
    except OSError as exc:
        raise UsageError(f"-o: cannot write {out}: {exc.strerror or exc}") from exc
    print(f"wrote {out} ({size} bytes): doctor {report.verdict}, {report.known_errors} known error line(s); "
          f"{', '.join(sorted(report.members))} under {report.folder}/")
    return 0


def run_hosts(args: argparse.Namespace, out: str, options: Any, engine_log: EngineLog | None) -> int:
    """One archive per host, collected over SSH in parallel; a host that cannot be reached is named."""
    from llmtpu.doctor.support_report import collect_report, write_archive
    from llmtpu.fleet import run_on_hosts
    from llmtpu.hosts_command import hosts_from_args

    if args.llm_tpu is not None:
        raise UsageError("--llm-tpu reads one machine's checkout; with --hosts or --inventory leave it out")
    specs, ssh_options = hosts_from_args(args)
    for spec in specs:
        _output(host_output(out, spec.name), args.force)
    results = run_on_hosts(specs, lambda target: collect_report(target, options, engine_log, None), ssh_options,
                           parallel=args.parallel)
    code = 0
    for result in results:
        path = host_output(out, result.spec.name)
        if result.value is None:
            print(f"{result.spec.name}: not collected: {result.error or result.status}")
            code = 3
            continue
        size = write_archive(result.value, path, force=args.force)
        print(f"wrote {path} ({size} bytes): doctor {result.value.verdict}, "
              f"{result.value.known_errors} known error line(s)")
    return code
