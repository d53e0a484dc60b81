"""Undo puts a replaced link back as a link (target-confinement review): clock persist on a board
whose unit file is a symlink, then clock undo, gives back the same link, not its target's bytes."""

from __future__ import annotations

import os
from pathlib import Path

from llmtpu.cli import main
from llmtpu.provision.clock import UNIT_PATH
from tests.provision_soc.test_clock_units import board  # noqa: F401 (fixture)


def test_persist_over_a_linked_unit_then_undo_restores_the_link(board, capsys) -> None:  # noqa: F811
    root, _driver = board
    unit = root / UNIT_PATH.lstrip("/")
    unit.parent.mkdir(parents=True, exist_ok=True)
    kept = root / "opt/units/llmtpu-clock.service"
    kept.parent.mkdir(parents=True)
    kept.write_text("[Unit]\nDescription=the admin's own unit\n")
    os.symlink("/opt/units/llmtpu-clock.service", unit)
    assert main(["clock", "persist", "--root", str(root), "--tpll", "750MHz", "--yes"]) in (0, 2)
    assert not unit.is_symlink()
    assert main(["clock", "undo", "--root", str(root), "--yes"]) == 0, capsys.readouterr()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert unit.is_symlink() and os.readlink(unit) == "/opt/units/llmtpu-clock.service"
    assert kept.read_text() == "[Unit]\nDescription=the admin's own unit\n"


def test_heaps_undo_restores_a_linked_boot_image_as_a_link(sysroot) -> None:
    from llmtpu.provision.heaps import BOOT_IMAGE, ResizeHeaps
    from llmtpu.provision.operation import JournalRecord
    from llmtpu.target import LocalTarget

    root: Path = sysroot("soc-board-ok")
    image = root / BOOT_IMAGE.lstrip("/")
    image.parent.mkdir(parents=True, exist_ok=True)
    backup = root / "var/lib/llmtpu/backup/emmcboot.itb"
    backup.parent.mkdir(parents=True)
    os.symlink("/boot/images/emmcboot-v1.itb", backup)
    image.write_bytes(b"new image")
    record = JournalRecord("heaps.resize", "x", {"backup": "/var/lib/llmtpu/backup/emmcboot.itb"})
    target = LocalTarget(str(root))
    target.makedirs("/var/lib/llmtpu/journal")
    record.path = "/var/lib/llmtpu/journal/x-heaps.resize.json"
    ResizeHeaps().undo(target, record)
    assert image.is_symlink() and os.readlink(image) == "/boot/images/emmcboot-v1.itb"


def test_a_symlink_loop_in_the_unit_path_is_one_line_and_exit_2(board, capsys) -> None:  # noqa: F811
    root, _driver = board
    systemd = root / "etc/systemd"
    systemd.mkdir(parents=True, exist_ok=True)
    if (systemd / "system").exists() or (systemd / "system").is_symlink():
        import shutil

        shutil.rmtree(systemd / "system")
    os.symlink("loop-b", systemd / "system")
    os.symlink("system", systemd / "loop-b")
    code = main(["clock", "persist", "--root", str(root), "--tpll", "750MHz", "--yes"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("llmtpu: error: ") and "Traceback" not in err
