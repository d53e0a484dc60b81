"""Issue 14 item 8: an operation that cannot run is the step's one clear line and exit 2, never a
raw `OperationError:` (or exit 3), and the heaps message points to no option that does not exist."""

from __future__ import annotations

from pathlib import Path

from tests.playbook.test_play_command import HEAP, play


def test_missing_memory_edit_is_one_line_and_exit_2(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    (root / HEAP).write_text(f"{3950 << 20}\n")  # too small, and no memory_edit.sh on the board
    result = play("fresh-soc-board", "--root", str(root), "--state-dir", str(tmp_path / "s"), "--yes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "OperationError" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "memory_edit.sh not found" in result.stdout and "failed" in result.stdout
    assert "--script" not in result.stdout


def test_the_script_path_the_message_offers_works_in_a_playbook_step(sysroot, tmp_path: Path) -> None:
    from tests.provision_heaps.test_heaps import SCRIPT, install_stand_in

    root = sysroot("soc-board-ok")
    (root / HEAP).write_text(f"{3950 << 20}\n")
    install_stand_in(root)
    moved = "/opt/kits/memory_edit"
    (root / moved.lstrip("/")).parent.mkdir(parents=True)
    (root / SCRIPT.lstrip("/")).parent.rename(root / moved.lstrip("/"))
    copy = tmp_path / "heaps.toml"
    copy.write_text(f'[playbook]\nname = "heaps"\n\n[[step]]\nid = "resize"\nrun = "operation"\n'
                    f'operation = "heaps.resize"\nargs = {{script = "{moved}/memory_edit.sh"}}\n')
    result = play(str(copy), "--root", str(root), "--state-dir", str(tmp_path / "s"), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr  # applied; stopped for the reboot
    assert (root / "boot/emmcboot.itb").read_text().startswith("itb -c -npu 7615")
