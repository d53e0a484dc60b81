"""Action plugin ``llmtpu.fleet.doctor``: llmtpu's doctor for one host, on the controller.

The checks run here, in the controller's llmtpu; the board is read through Ansible's connection
(its keys, become, jump hosts, forks) with llmtpu's own remote program, so the report equals
``llmtpu doctor --hosts`` on the same board. Nothing on the board is changed: ``changed`` is
always false and check mode runs the same reads.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.action import ActionBase

FAIL_ON = ("fail", "warn", "never")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        try:
            from llmtpu.doctor.checks import CHECKS
            from llmtpu.doctor.command import doctor_options
            from llmtpu.doctor.report import run_doctor
            from llmtpu.gathered import GatheredTarget
        except ImportError as exc:
            raise AnsibleActionFail(f"llmtpu is not installed for the controller's Python ({exc}); "
                                    "pip install llmtpu next to ansible-core") from exc
        from llmtpu.clikit import UsageError
        from llmtpu.target import TargetError

        args = self._task.args
        unknown = set(args) - {"root", "model", "models_dir", "only", "fail_on", "timeout", "python"}
        if unknown:
            raise AnsibleActionFail(f"llmtpu.fleet.doctor: unknown option(s) {', '.join(sorted(unknown))}")
        name = str(task_vars.get("inventory_hostname", self._play_context.remote_addr))
        root = str(args.get("root") or task_vars.get("llmtpu_root") or task_vars.get("root") or "/")
        fail_on = str(args.get("fail_on", "fail"))
        if fail_on not in FAIL_ON:
            raise AnsibleActionFail(f"llmtpu.fleet.doctor: fail_on={fail_on!r}; use one of {', '.join(FAIL_ON)}")
        only = list(args.get("only") or [])
        known = {c.id for c in CHECKS}
        if set(only) - known:
            raise AnsibleActionFail(f"llmtpu.fleet.doctor: unknown check(s) {', '.join(sorted(set(only) - known))}")
        python = str(args.get("python") or _interpreter(task_vars))
        try:
            timeout = float(args.get("timeout", 30))
            options = doctor_options(args.get("model"), str(args.get("models_dir", "/data")))
            target = GatheredTarget(name, root, self._execute, python=python, command_timeout=timeout)
            report = run_doctor(target, options, only)
        except (UsageError, TargetError, ValueError) as exc:
            result.update(failed=True, changed=False, msg=f"{name}: {exc}")
            return result
        document = report.to_json()
        counts = document["counts"]
        failed = fail_on != "never" and (document["verdict"] == "fail"
                                         or (fail_on == "warn" and document["verdict"] == "warn"))
        problems = [f"{c['id']} {c['status']}: {c['summary']}" for c in document["checks"]
                    if c["status"] in ("warn", "fail")]
        result.update(
            changed=False, failed=failed, verdict=document["verdict"], llmtpu_doctor=document,
            ansible_facts={"llmtpu_doctor": document}, round_trips=target.round_trips,
            msg=f"{name}: {document['verdict']} ({counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail, "
                f"{counts['skip']} skip)" + "".join(f"; {p}" for p in problems),
        )
        return result

    def _execute(self, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        """One command through Ansible's connection (become applied as for any module), bytes out."""
        answer = self._low_level_execute_command(command, in_data=stdin, sudoable=True,
                                                 encoding_errors="surrogate_or_strict")
        # Ansible decodes with surrogateescape, so encoding back gives the board's exact bytes.
        return (int(answer.get("rc", 1)), to_bytes(answer.get("stdout", ""), errors="surrogate_or_strict"),
                to_bytes(answer.get("stderr", ""), errors="surrogate_or_strict"))


def _interpreter(task_vars: dict[str, Any]) -> str:
    """The board's python: an explicit ansible_python_interpreter path, else the one Ansible found."""
    for key in ("ansible_python_interpreter", "discovered_interpreter_python"):
        value = task_vars.get(key) or (task_vars.get("ansible_facts") or {}).get(key)
        if isinstance(value, str) and value.startswith("/"):
            return value
    return "python3"
