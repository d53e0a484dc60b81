"""Run one piece of work on many machines at once: a bounded pool, deadlines, one result each.

This is deliberately not an orchestrator: N threads, one SSH connection per host, per-host
connect and command deadlines, and a result per host that says what happened. A host that is
down, refuses our key, presents an unknown or changed host key, or hangs is reported as such
and never holds up the others: a watchdog closes the connection of a host past its deadline,
which wakes its thread. For thousands of machines, feed llmtpu's JSON to Ansible or pyinfra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llmtpu.inventory import HostSpec
from llmtpu.ssh import ERROR, TIMED_OUT, SSHError, SSHOptions, SSHTarget
from llmtpu.target import TargetError

T = TypeVar("T")

#: The work finished on the host (its result may still be a failing report).
DONE = "done"
#: Extra seconds past a deadline before the watchdog closes the connection.
GRACE = 1.0
DEFAULT_PARALLEL = 16


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """What happened on one host: ``status`` is DONE or an SSHError kind."""

    spec: HostSpec
    status: str
    value: T | None = None
    error: str | None = None
    seconds: float = 0.0
    round_trips: int = 0
    host_key: str | None = None  # "known", or "added" with --accept-new

    @property
    def checked(self) -> bool:
        return self.status == DONE


TargetFactory = Callable[[HostSpec, SSHOptions], SSHTarget]


class _Running:
    """A host being worked on, as the watchdog sees it."""

    def __init__(self, target: SSHTarget, started: float, connect_budget: float) -> None:
        self.target = target
        self.connect_deadline = started + connect_budget
        self.work_deadline: float | None = None

    def overdue(self, now: float) -> bool:
        deadline = self.work_deadline if self.work_deadline is not None else self.connect_deadline
        return now > deadline + GRACE


def run_on_hosts(
    specs: Sequence[HostSpec],
    work: Callable[[SSHTarget], T],
    options: SSHOptions,
    parallel: int = DEFAULT_PARALLEL,
    on_start: Callable[[HostSpec], None] | None = None,
    on_done: Callable[[HostResult[T]], None] | None = None,
    target_factory: TargetFactory = SSHTarget,
) -> list[HostResult[T]]:
    """Run ``work(target)`` on every host, ``parallel`` at a time; results in ``specs`` order."""
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    running: dict[int, _Running] = {}
    lock = threading.Lock()

    def one(index: int, spec: HostSpec) -> HostResult[T]:
        started = time.monotonic()
        if on_start is not None:
            on_start(spec)
        target = target_factory(spec, options)
        state = _Running(target, started, options.connect_timeout * (1 + len(spec.jump)))
        with lock:
            running[index] = state
        try:
            target.connect()
            state.work_deadline = time.monotonic() + options.command_timeout
            target.deadline = state.work_deadline
            value = work(target)
            result: HostResult[T] = HostResult(spec, DONE, value, None, time.monotonic() - started,
                                               target.round_trips, target.host_key_outcome)
        except Exception as exc:  # one host's failure, whatever it is, is that host's result
            status, message = classify(exc, target)
            result = HostResult(spec, status, None, message, time.monotonic() - started, target.round_trips,
                                target.host_key_outcome)
        finally:
            with lock:
                running.pop(index, None)
            target.close()
        if on_done is not None:
            on_done(result)
        return result

    results: list[HostResult[T] | None] = [None] * len(specs)
    with ThreadPoolExecutor(max_workers=min(parallel, max(1, len(specs))), thread_name_prefix="llmtpu-host") as pool:
        futures: dict[Future[HostResult[T]], int] = {pool.submit(one, i, s): i for i, s in enumerate(specs)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    results[futures[future]] = future.result()
                now = time.monotonic()
                with lock:
                    late = [r.target for r in running.values() if r.overdue(now)]
                for target in late:
                    target.abort()
        except BaseException:  # Ctrl-C: start no more hosts, cut the running ones loose
            pool.shutdown(wait=False, cancel_futures=True)
            with lock:
                for state in running.values():
                    state.target.abort()
            raise
    return [r for r in results if r is not None]


def classify(exc: BaseException, target: SSHTarget) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while working on a host."""
    if target.aborted:
        return TIMED_OUT, f"no answer before the deadline ({exc})"
    if isinstance(exc, SSHError):
        return exc.kind, str(exc)
    if isinstance(exc, TargetError):
        return ERROR, str(exc)
    return ERROR, f"{type(exc).__name__}: {exc}"


@contextmanager
def live_progress(total: int, console: Any, what: str = "checking") -> Iterator[tuple[
        Callable[[HostSpec], None], Callable[[HostResult[Any]], None]]]:
    """A rich progress bar on ``console`` (stderr): yields (on_start, on_done) callbacks.

    Nothing is drawn when the console is not a terminal, so logs and --json stay clean.
    """
    if not console.is_terminal:
        yield (lambda spec: None), (lambda result: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=console, transient=True)
    task = progress.add_task(f"{what} {total} host{'' if total == 1 else 's'}", total=total, last="")
    active: set[str] = set()
    lock = threading.Lock()

    def started(spec: HostSpec) -> None:
        with lock:
            active.add(spec.name)
            progress.update(task, last=f"now: {', '.join(sorted(active)[:4])}")

    def done(result: HostResult[Any]) -> None:
        with lock:
            active.discard(result.spec.name)
            progress.update(task, advance=1, last=f"{result.spec.name}: {result.status}")

    with progress:
        yield started, done
