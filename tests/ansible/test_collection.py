"""The llmtpu.fleet collection, installed with real `ansible-galaxy collection install` from the
repository, run by real `ansible-playbook` against 8 real sshd boards (each a sample sysroot as
its root, like tests/fleet/test_fleet.py): every host's report equals `llmtpu doctor --hosts` on
the same boards, failed/changed follow the verdict, check mode reads the same and changes nothing,
and the summary callback prints llmtpu's own roll-up line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fleet.conftest import SAMPLES, comparable

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible" / "llmtpu" / "fleet"
BIN = Path(sys.executable).parent

#: name, group, sample
BOARDS = [
    ("pcie-ok", "pcie", "pcie-host-ok"),
    ("pcie-old", "pcie", "pcie-host-old-driver"),
    ("pcie-docker", "pcie", "pcie-docker-no-libsophon"),
    ("pcie-ok2", "pcie", "pcie-host-ok"),
    ("soc-ok", "soc", "soc-board-ok"),
    ("soc-slowclk", "soc", "soc-board-downclocked"),
    ("soc-oldkernel", "soc", "soc-board-old-kernel"),
    ("soc-ok2", "soc", "soc-board-ok"),
]

PLAYBOOK = """
- name: check the boards with llmtpu
  hosts: all
  gather_facts: false
  tasks:
    - name: llmtpu doctor
      llmtpu.fleet.doctor:
        timeout: 60
      register: doctor
      ignore_errors: true
    - name: keep each report on the controller
      ansible.builtin.copy:
        content: "{{ doctor | to_json }}"
        dest: "{{ results_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
      check_mode: false
"""


def ansible_env(tmp_path: Path, home: Path) -> dict[str, str]:
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\nforks = 8\nhost_key_checking = True\ncallbacks_enabled = llmtpu.fleet.summary\n"
                      "interpreter_python = auto_silent\n"
                      "[ssh_connection]\nssh_args = -o ControlMaster=no -o ControlPersist=no\n")
    return {"PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
            "ANSIBLE_CONFIG": str(config), "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "atmp"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "LC_ALL": "C.UTF-8"}


@pytest.fixture
def boards(sshd_farm, home: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The 8 boards, one INI inventory both Ansible and llmtpu read, and Ansible installed."""
    require((BIN / "ansible-playbook").exists(), "ansible-playbook (pip install ansible-core)")
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    lines: dict[str, list[str]] = {}
    for name, group, sample in BOARDS:
        board = sshd_farm.add(name)
        lines.setdefault(group, []).append(
            f"{name} ansible_host=127.0.0.1 ansible_port={board.port} root={SAMPLES / sample} "
            f"ansible_user={board.user} ansible_ssh_private_key_file={sshd_farm.client_key}")
    inventory = tmp_path / "boards.ini"
    inventory.write_text("".join(f"[{g}]\n" + "\n".join(hosts) + "\n\n" for g, hosts in lines.items())
                         + "[all:vars]\nansible_ssh_common_args='-F /dev/null -o StrictHostKeyChecking=yes "
                         f"-o UserKnownHostsFile={sshd_farm.known_hosts}'\n"
                         "ansible_python_interpreter=/usr/bin/python3\n")
    env = ansible_env(tmp_path, home)
    installed = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", str(COLLECTION), "-p",
                                str(tmp_path / "collections")], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "collections/ansible_collections/llmtpu/fleet/plugins/action/doctor.py").exists()
    return inventory, env


def playbook(tmp_path: Path, inventory: Path, env: dict[str, str], *extra: str) -> tuple[int, str, dict]:
    results = tmp_path / f"results{len(list(tmp_path.glob('results*')))}"
    results.mkdir()
    book = tmp_path / "doctor.yml"
    book.write_text(PLAYBOOK)
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(book),
                          "-e", f"results_dir={results}", *extra], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    found = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    return run.returncode, run.stdout + run.stderr, found


def test_playbook_reports_equal_llmtpu_doctor_hosts(boards: tuple[Path, dict[str, str]], tmp_path: Path,
                                                    cli) -> None:
    inventory, env = boards
    code, out, found = playbook(tmp_path, inventory, env)
    assert code == 0, out  # ignore_errors: a failing verdict is a failed task, not a failed run
    code, fleet_out, err = cli("doctor", "--inventory", str(inventory), "--json", "--timeout", "60")
    assert code == 2, err
    fleet = {h["name"]: h for h in json.loads(fleet_out)["hosts"]}
    assert sorted(found) == sorted(fleet) == sorted(name for name, *_ in BOARDS)
    for name, _, _sample in BOARDS:
        result, ours = found[name], fleet[name]["report"]
        assert comparable(result["llmtpu_doctor"]) == comparable(ours), name
        assert result["changed"] is False
        assert result.get("failed", False) is (ours["verdict"] == "fail"), name
        assert result["verdict"] == ours["verdict"]
    summary = json.loads(fleet_out)["summary"]["text"]
    assert f"llmtpu fleet: {summary}" in out


def test_check_mode_reads_the_same_and_changes_nothing(boards: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    inventory, env = boards
    before = {name: sorted(str(p) for p in (SAMPLES / sample).rglob("*")) for name, _, sample in BOARDS}
    code, out, found = playbook(tmp_path, inventory, env, "--check", "--diff")
    assert code == 0, out
    assert sorted(found) == sorted(name for name, *_ in BOARDS)
    assert all(r["changed"] is False for r in found.values())
    assert {name: sorted(str(p) for p in (SAMPLES / sample).rglob("*")) for name, _, sample in BOARDS} == before
    assert found["pcie-old"]["verdict"] == "fail" and found["pcie-ok"]["verdict"] == "ok"


def test_an_unreachable_board_is_unreachable_to_ansible(sshd_farm, boards: tuple[Path, dict[str, str]],
                                                        tmp_path: Path) -> None:
    inventory, env = boards
    sshd_farm.stop(next(b for b in sshd_farm.boards if b.name == "soc-ok2"))
    code, out, found = playbook(tmp_path, inventory, env, "--limit", "soc")
    assert code == 4, out  # ansible-playbook: a host was unreachable
    assert "soc-ok2" not in found and sorted(found) == ["soc-ok", "soc-oldkernel", "soc-slowclk"]
    assert "1 unreachable" in out.split("llmtpu fleet:")[1].splitlines()[0]
