#!/usr/bin/python
"""Documentation of the ``llmtpu.fleet.doctor`` action; the work is in plugins/action/doctor.py."""

from __future__ import annotations

DOCUMENTATION = r"""
module: doctor
short_description: Check a Sophgo BM1684X machine with llmtpu's doctor
description:
  - Runs C(llmtpu doctor) for the host on the controller, reading the machine through Ansible's
    connection with the same remote program C(llmtpu doctor --hosts) uses.
  - Returns the C(llmtpu.doctor/1) report. Never changes the machine; check mode is supported.
  - The controller needs llmtpu installed in the Python that runs Ansible.
version_added: 0.1.0
options:
  root:
    description: Folder on the machine that holds its files (a sysroot); defaults to the host's
      C(llmtpu_root) or C(root) variable, else C(/).
    type: str
  model:
    description: Model the memory and disk checks are sized for (C(llmtpu doctor --list-models)).
    type: str
    default: llama2-7b
  models_dir:
    description: Folder on the machine where bmodels live.
    type: str
    default: /data
  only:
    description: Run only these check ids.
    type: list
    elements: str
  fail_on:
    description: Verdict that marks the task failed.
    type: str
    choices: [fail, warn, never]
    default: fail
  timeout:
    description: Seconds each remote command may take.
    type: float
    default: 30
  python:
    description: Python on the machine; default the host's ansible_python_interpreter, else python3.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: llmtpu contributors
"""

RETURN = r"""
llmtpu_doctor:
  description: The llmtpu.doctor/1 report (also set as the fact C(llmtpu_doctor)).
  returned: success
  type: dict
verdict:
  description: ok, warn or fail.
  returned: success
  type: str
"""

if __name__ == "__main__":
    import json
    import sys

    print(json.dumps({"failed": True, "msg": "llmtpu.fleet.doctor is an action plugin: it runs on the controller, "
                                             "not as a module on the machine"}))
    sys.exit(1)
