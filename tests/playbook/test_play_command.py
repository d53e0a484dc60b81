"""`llmtpu play` end to end in a subprocess: plan, refusal without a terminal, --yes, a user's copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.provision_heaps.test_heaps import install_stand_in

HEAP = "sys/kernel/debug/ion/bm_npu_heap_dump/total_mem"


def play(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtpu", "play", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})


def small_heap_board(sysroot) -> Path:
    root = sysroot("soc-board-ok")
    (root / HEAP).write_text(f"{3950 << 20}\n")
    install_stand_in(root)
    return root


def test_dry_run_prints_the_plan_and_changes_nothing(sysroot, tmp_path: Path) -> None:
    root = small_heap_board(sysroot)
    image = (root / "boot/emmcboot.itb").read_bytes()
    state_dir = tmp_path / "state"
    result = play("fresh-soc-board", "--root", str(root), "--dry-run", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    assert "planned" in result.stdout and "-npu 7615 -vpu 3072 -vpp 3072" in result.stdout
    assert (root / "boot/emmcboot.itb").read_bytes() == image
    assert not state_dir.exists()


def test_no_terminal_and_no_yes_is_refused(sysroot, tmp_path: Path) -> None:
    root = small_heap_board(sysroot)
    result = play("fresh-soc-board", "--root", str(root), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 64
    assert "no terminal to ask on" in result.stderr and "--yes" in result.stderr


def test_yes_applies_and_a_rerun_continues(sysroot, tmp_path: Path) -> None:
    root = small_heap_board(sysroot)
    state_dir = str(tmp_path / "state")
    result = play("fresh-soc-board", "--root", str(root), "--state-dir", state_dir, "--yes")
    assert result.returncode == 1, result.stdout + result.stderr  # stopped: reboot needed
    assert "reboot the machine now" in result.stdout
    assert (root / "boot/emmcboot.itb").read_text().startswith("itb -c -npu 7615")
    image = (root / "boot/emmcboot.itb").read_bytes()
    not_rebooted = play("fresh-soc-board", "--root", str(root), "--state-dir", state_dir, "--yes")
    assert not_rebooted.returncode == 1, not_rebooted.stdout + not_rebooted.stderr  # still waits for the reboot
    assert "reboot the machine now" in not_rebooted.stdout and "reboot the board" in not_rebooted.stdout
    assert (root / "boot/emmcboot.itb").read_bytes() == image  # memory_edit.sh was not run again
    (root / HEAP).write_text(f"{7615 << 20}\n")  # the board rebooted with the new layout
    again = play("fresh-soc-board", "--root", str(root), "--state-dir", state_dir, "--yes")
    assert again.returncode == 0, again.stdout
    assert "condition not met: memory.heaps is fail" in again.stdout


def test_a_users_broken_copy_is_refused_with_its_line(tmp_path: Path) -> None:
    copy = tmp_path / "mine.toml"
    copy.write_text('[playbook]\nname = "mine"\n\n[[step]]\nid = "x"\nrun = "reboot-everything"\n')
    result = play(str(copy), "--dry-run")
    assert result.returncode == 64
    assert f"{copy}:4: step 'x': unknown run" in result.stderr


def test_list_and_unknown_name() -> None:
    listing = play("--list")
    assert listing.returncode == 0 and "fresh-soc-board" in listing.stdout
    unknown = play("nope")
    assert unknown.returncode == 64 and "no playbook named 'nope'" in unknown.stderr
