"""`llmtpu bundle create|verify`: argument parsing and rendering; the work is in bundle.py."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmtpu.clikit import UsageError


def add_parser(commands: Any) -> None:
    from llmtpu.provision.bundle import ARCHES

    parser = commands.add_parser(
        "bundle", help="build or check an offline bundle of models/ and deploy/",
        description="Build, on a machine with internet, the folder `llmtpu push` copies to offline boards: "
                    "LLM-TPU's models/ and deploy/ plus extra files, with a sha256 manifest.",
    )
    actions = parser.add_subparsers(dest="bundle_action", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    create = actions.add_parser("create", help="collect files into a new bundle folder")
    create.add_argument("out", metavar="OUT", type=Path, help="new (or empty) folder for the bundle")
    create.add_argument("--from", dest="from_dirs", nargs="+", required=True, type=Path, metavar="DIR",
                        help="LLM-TPU checkout(s) whose models/ and deploy/ are collected")
    create.add_argument("--model", help="take only models/NAME from each --from folder")
    create.add_argument("--arch", choices=ARCHES, help="the boards' kind, recorded in the manifest")
    create.add_argument("--extra", nargs="+", default=[], type=Path, metavar="FILE",
                        help="more files for extra/: sophon .debs, the engine binary for the board's arch")
    create.add_argument("--json", action="store_true", help="print one JSON document (schema llmtpu.bundle/1)")
    create.set_defaults(run=run_create)
    verify = actions.add_parser("verify", help="re-hash every file of a bundle against its manifest")
    verify.add_argument("out", metavar="OUT", type=Path, help="the bundle folder")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.set_defaults(run=run_verify)


@contextmanager
def byte_bar(enabled: bool, label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A rich progress bar on stderr fed by (start(total), advance(n)); silent when disabled."""
    if not enabled:
        yield (lambda total: None), (lambda n: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield (lambda total: progress.update(task, total=total)), (lambda n: progress.advance(task, n))


def run_create(args: argparse.Namespace) -> int:
    from llmtpu.provision.bundle import BundleError, collect, create_bundle, remove_bundle

    existed = args.out.exists()
    try:
        sources = collect(args.from_dirs, args.model, args.extra)
        with byte_bar(not args.json, "hashing") as (start, advance):
            manifest = create_bundle(args.out, sources, args.model, args.arch, start, advance)
    except BundleError as exc:
        if not existed:
            remove_bundle(args.out)
        raise UsageError(str(exc)) from exc
    if args.json:
        json.dump({"schema": "llmtpu.bundle/1", "bundle": str(args.out), "digest": manifest.digest,
                   "files": len(manifest.files), "links": len(manifest.links), "bytes": manifest.total_bytes},
                  sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"bundle {args.out}: {len(manifest.files)} files, {len(manifest.links)} links, "
              f"{manifest.total_bytes / 2**20:.1f} MiB, digest {manifest.digest}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from llmtpu.provision.bundle import BundleError, load_manifest, verify_bundle

    try:
        load_manifest(args.out)  # a refused manifest is one line, before any progress bar is drawn
        with byte_bar(not args.json, "verifying") as (start, advance):
            result = verify_bundle(args.out, rehash=True, start=start, progress=advance)
    except BundleError as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        json.dump({"schema": "llmtpu.bundle/1", "bundle": str(args.out), "digest": result.manifest.digest,
                   "ok": result.ok, "problems": list(result.problems)}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for problem in result.problems:
            print(f"bad: {problem}")
        print(f"bundle {args.out}: {'ok' if result.ok else 'FAILED'} ({len(result.manifest.files)} files, "
              f"digest {result.manifest.digest})")
    return 0 if result.ok else 2
