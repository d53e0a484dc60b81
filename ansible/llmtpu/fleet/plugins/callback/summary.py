"""Callback ``llmtpu.fleet.summary``: llmtpu's fleet roll-up at the end of a playbook.

Collects every host's ``llmtpu.fleet.doctor`` result (and the hosts Ansible could not reach)
and prints the same summary line ``llmtpu doctor --hosts`` prints, e.g.
``llmtpu fleet: 37 ok, 2 need the driver update, 1 unreachable``.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: summary
type: aggregate
short_description: Print llmtpu's fleet roll-up of the llmtpu.fleet.doctor results
description:
  - At the end of the playbook, one line counting hosts by what they need, as C(llmtpu doctor --hosts) says it.
requirements:
  - llmtpu installed for the controller's Python
  - enable with C(callbacks_enabled = llmtpu.fleet.summary)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "llmtpu.fleet.summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reports: dict[str, Any] = {}  # host -> llmtpu.doctor/1 document, or a not-checked status

    @staticmethod
    def _is_doctor(result: Any) -> bool:
        action = getattr(result._task, "resolved_action", None) or result._task.action
        return str(action).endswith("llmtpu.fleet.doctor") or "llmtpu_doctor" in result._result

    def _record(self, result: Any) -> None:
        if self._is_doctor(result):
            document = result._result.get("llmtpu_doctor")
            self.reports[result._host.get_name()] = document if document is not None else "error"

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        if self._is_doctor(result):
            self.reports[result._host.get_name()] = "unreachable"

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self.reports:
            return
        try:
            from llmtpu.doctor.fleet_render import summary_line
            from llmtpu.fleet import DONE, HostResult
            from llmtpu.gathered import report_from_json
            from llmtpu.inventory import HostSpec
        except ImportError as exc:
            self._display.warning(f"llmtpu.fleet.summary: llmtpu is not installed for this Python ({exc})")
            return
        results = []
        for host, found in self.reports.items():
            spec = HostSpec(name=host, hostname=host)
            if isinstance(found, dict):
                results.append(HostResult(spec, DONE, report_from_json(found)))
            else:
                results.append(HostResult(spec, found))
        self._display.display(f"llmtpu fleet: {summary_line(results)}")
