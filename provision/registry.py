"""Which Operation carries out each operation or fix id: the one table `doctor --fix`,
playbooks and `llmtpu undo` share. A factory gets the target and the step's arguments."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from llmtpu.provision.operation import Operation, OperationError
from llmtpu.target import Target

Factory = Callable[[Target, dict[str, Any]], Operation]


def _install_debs(target: Target, args: dict[str, Any]) -> Operation:
    """Debs from a folder, or fetched first (a mirror when given, else Sophgo's dfss)."""
    from llmtpu.provision import debs, fetch

    folder = args.get("debs_dir")
    if folder is None:
        version = args.get("version") or fetch.load_sources()["defaults"]["debs"]
        download_dir = args.get("download_dir") or os.path.expanduser("~/.cache/llmtpu/downloads")
        folder = os.path.join(download_dir, f"debs-{version}")
        source = fetch.MirrorSource(args["mirror"]) if args.get("mirror") else fetch.DfssSource()
        try:
            fetch.fetch(fetch.artifacts("debs", version), source, folder)
        except fetch.FetchError as exc:
            raise OperationError(f"debs.install: {exc}") from exc
    return debs.InstallDebs(debs.debs_in(folder))


def _configure_debs(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.debs import ConfigureDebs

    return ConfigureDebs()


def _heaps(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.heaps import ResizeHeaps

    return ResizeHeaps(sizes_mib=args.get("sizes_mib"), script=args.get("script"))


def _clock_apply(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.clock import ClockApply

    return ClockApply(args.get("rates"))


def _clock_persist(target: Target, args: dict[str, Any]) -> Operation:
    """Persist the given rates, or the ones running now (the doctor's 'reduced, not persistent')."""
    from llmtpu.provision.clock import ClockPersist, read_rates

    return ClockPersist(args.get("rates") or read_rates(target))


FACTORIES: dict[str, Factory] = {
    "debs.install": _install_debs,
    "debs.configure": _configure_debs,
    "heaps.resize": _heaps,
    "clock.apply": _clock_apply,
    "clock.persist": _clock_persist,
}


def operation_ids() -> set[str]:
    return set(FACTORIES)


def operation_for(op_id: str, target: Target, args: dict[str, Any]) -> Operation | None:
    """The operation for an id, built for this target with its arguments; None when llmtpu has none."""
    factory = FACTORIES.get(op_id)
    return factory(target, args) if factory else None
