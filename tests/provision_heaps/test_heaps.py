"""heaps.resize on SoC sysroots, driving a stand-in memory_edit.sh that behaves like Sophgo's.

The stand-in writes a new boot image into its output folder and prints the install line, as
the real script does (facts: sophgo.md section 3); "rebooting" is the test rewriting the
debugfs heap sizes, which only the kernel does on a board.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmtpu.provision.heaps import BOOT_IMAGE, ResizeHeaps
from llmtpu.provision.operation import Journal, OperationError
from llmtpu.target import LocalTarget

SCRIPT = "/data/memory_edit/memory_edit.sh"


def install_stand_in(root: Path, exit_code: int = 0) -> None:
    script = root / SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text(f"""#!/bin/sh
# stand-in for Sophgo's memory_edit.sh: same flags, same Info lines, writes output/emmcboot.itb
here=$(cd "$(dirname "$0")" && pwd)
echo "INFO: version: 2.12"
if [ "{exit_code}" != 0 ]; then echo "Error: ddr size too small"; exit {exit_code}; fi
[ "$1" = "-c" ] || {{ echo "Error: usage"; exit 255; }}
mkdir -p "$here/output"
printf 'itb %s\\n' "$*" > "$here/output/emmcboot.itb"
echo "Info: check edit size ok"
echo "Please reboot the device after running this command for the changes to take effect:"
echo "sudo cp ${{here#{root}}}/output/emmcboot.itb /boot/emmcboot.itb && sync"
""")
    os.chmod(script, 0o755)


def reboot(root: Path, npu_mib: int) -> None:
    (root / "sys/kernel/debug/ion/bm_npu_heap_dump/total_mem").write_text(f"{npu_mib << 20}\n")


def test_resize_plans_applies_waits_for_reboot_and_undoes(sysroot) -> None:
    root = sysroot("soc-board-old-kernel")
    (root / "boot/emmcboot.itb").write_bytes(b"factory image\n")
    install_stand_in(root)
    target = LocalTarget(str(root))
    op = ResizeHeaps()

    plan = op.plan(target)
    assert [c.what for c in plan.changes] == [f"run {SCRIPT} -c -npu 7615 -vpu 3072 -vpp 3072",
                                              f"replace {BOOT_IMAGE} (the current one is kept for undo)"]
    assert plan.changes[0].before == "npu 3950 MiB, vpu 2047 MiB, vpp 3072 MiB"
    op.apply(target, plan, Journal(target))
    assert (root / "boot/emmcboot.itb").read_text() == "itb -c -npu 7615 -vpu 3072 -vpp 3072\n"
    assert op.verify(target) == []  # installed, reboot pending

    again = op.plan(target)
    assert again.nothing_to_do and "reboot the board" in again.notes[0]

    entry = Journal(target).last("heaps.resize")
    assert entry is not None
    op.undo(target, entry)
    assert (root / "boot/emmcboot.itb").read_bytes() == b"factory image\n"
    assert Journal(target).last("heaps.resize") is None


def test_after_reboot_nothing_to_do(sysroot) -> None:
    root = sysroot("soc-board-old-kernel")
    install_stand_in(root)
    reboot(root, 7615)
    (root / "sys/kernel/debug/ion/bm_vpu_heap_dump/total_mem").write_text(f"{3072 << 20}\n")
    plan = ResizeHeaps().plan(LocalTarget(str(root)))
    assert plan.nothing_to_do and "already" in plan.notes[0]


def test_script_failure_changes_nothing(sysroot) -> None:
    root = sysroot("soc-board-old-kernel")
    before = (root / "boot/emmcboot.itb").read_bytes()
    install_stand_in(root, exit_code=255)
    target = LocalTarget(str(root))
    op = ResizeHeaps()
    with pytest.raises(OperationError, match="Error: ddr size too small"):
        op.apply(target, op.plan(target), Journal(target))
    assert (root / "boot/emmcboot.itb").read_bytes() == before
    assert Journal(target).records() == []


def test_missing_script_is_a_clear_error(sysroot) -> None:
    target = LocalTarget(str(sysroot("soc-board-old-kernel")))
    with pytest.raises(OperationError, match="memory_edit.sh not found .*DeviceMemoryModificationKit") as caught:
        ResizeHeaps().plan(target)
    assert "--script" not in str(caught.value)  # no such option exists (issue 14 item 8)
    assert "`script` in the args" in str(caught.value)
