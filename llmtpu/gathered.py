"""A Target over someone else's remote shell: the SSH target's fact gathering, other transports.

Ansible (and AWX) already hold the connection to every board: its keys, become, jump hosts and
forks. The ``llmtpu.fleet.doctor`` action plugin runs the doctor on the controller and sends
llmtpu's own remote program (``llmtpu.ssh.GATHER_SCRIPT``, the same one `--hosts` sends) through
Ansible's connection. This module is that seam: everything of ``SSHTarget`` (one-command
prefetch, the cache, framed answers, deadlines, confinement under a root) except where the bytes
travel: ``SSHTarget.execute``, the public transport, is here a caller's ``execute(command, stdin,
timeout)``. There is no SFTP fallback here: a machine without
python3 is refused with that reason (Ansible needs python3 there anyway).
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from typing import Any

from llmtpu.doctor.checks import CheckResult, ChipRow, Evidence, Fix
from llmtpu.doctor.report import JSON_SCHEMA, Report
from llmtpu.inventory import HostSpec, refuse_option_like
from llmtpu.ssh import ERROR, SSHError, SSHOptions, SSHTarget
from llmtpu.target import TargetError

#: ``execute(command line, stdin bytes or None, timeout s) -> (exit status, stdout, stderr)``;
#: it raises what its transport raises when the machine cannot be reached.
Execute = Callable[[str, "bytes | None", float], "tuple[int, bytes, bytes]"]


class GatheredTarget(SSHTarget):
    """The machine behind ``execute``, read with the SSH target's remote program and cache."""

    def __init__(self, name: str, root: str, execute: Execute, python: str = "python3",
                 command_timeout: float = 30.0) -> None:
        if not root.startswith("/"):
            raise TargetError(f"{name}: root={root!r} must be an absolute path on that machine")
        refuse_option_like(name, "python", python)
        spec = HostSpec(name=name, hostname=name, root=root, vars={"ansible_python_interpreter": python})
        super().__init__(spec, SSHOptions(command_timeout=command_timeout, python=python))
        self._execute = execute

    def connect(self) -> None:
        """The transport is connected by its owner (Ansible connects on the first command)."""

    def close(self) -> None:
        """Nothing of ours to close: the transport belongs to the caller."""

    def execute(self, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes, bool]:
        """One command through the caller's transport, bounded by ``timeout``: a transport that
        hangs is left behind (its thread is a daemon) and the read counts as timed out."""
        self.round_trips += 1
        answer: list[tuple[int, bytes, bytes]] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                answer.append(self._execute(command, stdin, timeout))
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)

        worker = threading.Thread(target=work, name=f"llmtpu-exec-{self.name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return -9, b"", b"", True
        if failure:
            raise failure[0]
        status, out, err = answer[0]
        return status, out, err, False

    def _sftp_client(self) -> Any:
        raise SSHError(ERROR, f"{self.name}: no python3 answered there ({shlex.quote(self.options.python)}); "
                              "set ansible_python_interpreter or install python3 on the machine")

    def open_channel(self, command: str, timeout: float | None = None) -> Any:
        raise SSHError(ERROR, f"{self.name}: the engine's streaming protocol needs llmtpu's own SSH connection "
                              "(`llmtpu doctor --smoke --hosts ...`)")

    def abort(self) -> None:
        self.aborted = True


def report_from_json(document: dict[str, Any]) -> Report:
    """A report back from its ``llmtpu.doctor/1`` document (what an Ansible worker hands the
    controller's callback), so the fleet roll-up is llmtpu's own summary line."""
    if not isinstance(document, dict) or document.get("schema") != JSON_SCHEMA:
        raise ValueError(f"not an {JSON_SCHEMA} document")
    results = tuple(CheckResult(
        id=c["id"], title=c["title"], status=c["status"], summary=c["summary"],
        evidence=tuple(Evidence(e["source"], e["value"]) for e in c["evidence"]),
        fix=None if c["fix"] is None else Fix(c["fix"]["id"], c["fix"]["summary"], tuple(c["fix"]["commands"])),
        source=c["rule_source"],
    ) for c in document["checks"])
    chips = tuple(ChipRow(**(row | {"problems": tuple(row["problems"])})) for row in document.get("chips", ()))
    return Report(document["host"], document["root"], document["machine_kind"], results, chips)


__all__ = ["Execute", "GatheredTarget", "report_from_json"]
