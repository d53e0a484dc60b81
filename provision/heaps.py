"""Resize the SoC's NPU/VPU/VPP ion heaps with the board's own memory_edit.sh.

Sophgo's memory_edit.sh (sophon-tools, DeviceMemoryModificationKit) edits the device tree in
the boot image: ``-p`` prints the layout, ``-c -npu N -vpu N -vpp N`` (MiB) writes a new
``emmcboot.itb`` into its output folder and prints the ``sudo cp ... /boot/emmcboot.itb``
line that installs it. The new sizes take effect after a reboot. We never edit the device
tree ourselves: we run the script, keep a copy of the boot image, install the new one
atomically, and undo by putting the copy back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from llmtpu.doctor.facts import ion_heaps
from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, OperationError, Plan, restore_backup
from llmtpu.target import Target, TargetError

BOOT_IMAGE = "/boot/emmcboot.itb"  # BM1684/BM1684X; BM1688 uses /boot/boot.itb
#: LLM-TPU's recommended layout for 7B models (models/Qwen1_5/README.md): MiB.
RECOMMENDED_MIB = {"npu": 7615, "vpu": 3072, "vpp": 3072}
#: Where users unpack memory_edit (LLM-TPU's instructions unpack it in the home or /data folder).
SCRIPT_CANDIDATES = ("/data/memory_edit/memory_edit.sh", "/home/linaro/memory_edit/memory_edit.sh",
                     "/root/memory_edit/memory_edit.sh")
_INSTALL_LINE = re.compile(r"cp\s+(?P<src>\S+emmcboot\.itb)\s+(?P<dst>/boot/emmcboot\.itb)")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ResizeHeaps(Operation):
    """``heaps.resize``: install a boot image whose ion heaps fit the model; reboot to apply."""

    id = "heaps.resize"
    summary = "resize the NPU/VPU/VPP heaps with memory_edit.sh (reboot needed)"

    def __init__(self, sizes_mib: dict[str, int] | None = None, script: str | None = None) -> None:
        self.sizes_mib = dict(sizes_mib or RECOMMENDED_MIB)
        self.script = script

    def find_script(self, target: Target) -> str:
        candidates: Sequence[str] = [self.script] if self.script else SCRIPT_CANDIDATES
        for path in candidates:
            if target.exists(path):
                return path
        raise OperationError(
            f"memory_edit.sh not found on {target.name} (looked in {', '.join(candidates)}); unpack Sophgo's "
            "DeviceMemoryModificationKit into one of those folders, or name its path as `script` in the args "
            "of a playbook step `operation = \"heaps.resize\"`")

    def _pending(self, target: Target) -> JournalRecord | None:
        """An apply whose image is installed but not booted yet (the heaps still show old sizes)."""
        entry = Journal(target).last(self.id)
        if entry is None:
            return None
        try:
            installed = digest(target.read_bytes(BOOT_IMAGE, limit=1 << 30))
        except OSError:
            return None
        return entry if installed == entry.undo.get("installed_sha256") else None

    def plan(self, target: Target) -> Plan:
        plan = Plan(self.id, target.name)
        heaps = ion_heaps(target)
        if heaps.value is None:
            raise OperationError(f"cannot read the ion heaps on {target.name}: {heaps.problem}")
        now = {k: v >> 20 for k, v in heaps.value.items()}
        if all(now.get(k, 0) >= v for k, v in self.sizes_mib.items()):
            plan.notes.append(f"heaps already {now} MiB")
            return plan
        pending = self._pending(target)
        if pending is not None:
            plan.notes.append(f"new boot image installed on {pending.started}; reboot the board to apply it")
            plan.reboot_pending = True
            return plan
        script = self.find_script(target)
        wanted = " ".join(f"-{k} {v}" for k, v in self.sizes_mib.items())
        plan.changes.append(Change(f"run {script} -c {wanted}",
                                   ", ".join(f"{k} {now.get(k, 0)} MiB" for k in self.sizes_mib),
                                   ", ".join(f"{k} {v} MiB" for k, v in self.sizes_mib.items())))
        plan.changes.append(Change(f"replace {BOOT_IMAGE} (the current one is kept for undo)"))
        plan.notes.append("the new sizes take effect after a reboot")
        plan.reboot_required = True
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        if plan.nothing_to_do:
            return
        script = self.find_script(target)
        argv = [target.host_path(script), "-c"]
        for heap, mib in self.sizes_mib.items():
            argv += [f"-{heap}", str(mib)]
        try:
            result = target.run(argv, timeout=300)
        except TargetError as exc:
            raise OperationError(f"memory_edit.sh could not run: {exc}") from exc
        output = result.text() + result.stderr.decode(errors="replace")
        if not result.ok:
            errors = [line for line in output.splitlines() if line.startswith("Error")] or output.splitlines()[-1:]
            raise OperationError(f"memory_edit.sh failed (exit {result.returncode}): {' '.join(errors)}")
        match = _INSTALL_LINE.search(output)
        if match is None:
            raise OperationError("memory_edit.sh did not say where the new boot image is; nothing was changed")
        new_image = target.read_bytes(match["src"], limit=1 << 30)
        backup = target.write_atomic(BOOT_IMAGE, new_image, mode=0o755, backup=True)
        journal.record(self.id, {"backup": backup, "installed_sha256": digest(new_image),
                                 "sizes_mib": self.sizes_mib})

    def verify(self, target: Target) -> list[str]:
        heaps = ion_heaps(target)
        if heaps.value is not None and all(heaps.value.get(k, 0) >> 20 >= v for k, v in self.sizes_mib.items()):
            return []
        if self._pending(target) is not None:
            return []  # installed; the running kernel shows the new sizes only after a reboot
        return [f"heaps are {heaps.raw or heaps.problem} and no new boot image is installed"]

    def plan_undo(self, target: Target, entry: JournalRecord) -> Plan:
        backup = entry.undo.get("backup")
        plan = Plan(self.id + ".undo", target.name)
        if not backup:
            plan.notes.append("the boot image replaced had no previous copy; nothing to restore")
            return plan
        plan.changes.append(Change(f"restore {BOOT_IMAGE} from {backup}"))
        plan.notes.append("reboot the board to boot the previous layout")
        plan.reboot_required = True
        return plan

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = self.plan_undo(target, entry)
        if plan.changes:
            restore_backup(target, entry.undo["backup"], BOOT_IMAGE, mode=0o755)
        Journal(target).mark_undone(entry)
        return plan

