"""Which Operation carries out each operation or fix id (the ids doctor fixes and playbooks name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmtpu.provision.operation import Operation


def _heaps(args: dict[str, Any]) -> Operation:
    from llmtpu.provision.heaps import ResizeHeaps

    return ResizeHeaps(sizes_mib=args.get("sizes_mib"), script=args.get("script"))


def _clock_apply(args: dict[str, Any]) -> Operation:
    from llmtpu.provision.clock import ClockApply

    return ClockApply(args.get("rates"))


def _clock_persist(args: dict[str, Any]) -> Operation:
    from llmtpu.provision.clock import ClockPersist

    return ClockPersist(args.get("rates"))


FACTORIES: dict[str, Callable[[dict[str, Any]], Operation]] = {
    "heaps.resize": _heaps,
    "clock.apply": _clock_apply,
    "clock.persist": _clock_persist,
}


def operation_ids() -> set[str]:
    return set(FACTORIES)


def operation_for(op_id: str, args: dict[str, Any]) -> Operation | None:
    """The operation for an id, built with its arguments; None when llmtpu has none for it."""
    factory = FACTORIES.get(op_id)
    return factory(args) if factory else None
