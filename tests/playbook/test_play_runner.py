"""Running playbooks on sysroot machines: conditions, stops for manual steps, resume, dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtpu.doctor.checks import DoctorOptions, check_ids
from llmtpu.playbook import PlayRunner, PlayState, parse_playbook, read_playbook_text
from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, Plan
from llmtpu.target import LocalTarget, Target

HEAP = "/sys/kernel/debug/ion/bm_npu_heap_dump/total_mem"


class GrowNpuHeap(Operation):
    """Test double for the heaps operation: on a sysroot, 'reboot with a bigger heap'."""

    id = "heaps.resize"

    def plan(self, target: Target) -> Plan:
        now = target.read_text(HEAP).strip()
        want = str(7615 << 20)
        changes = [] if now == want else [Change(f"npu heap {HEAP}", now, want)]
        return Plan(self.id, target.name, changes)

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        before = target.read_text(HEAP)
        target.write_atomic(HEAP, f"{7615 << 20}\n".encode(), backup=False)
        journal.record(self.id, {"npu": before})

    def verify(self, target: Target) -> list[str]:
        return [] if int(target.read_text(HEAP)) >= 7615 << 20 else ["heap still small"]

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        raise NotImplementedError("not needed by these tests")


def operation_for(op_id: str, args: dict[str, Any]) -> Operation | None:
    return GrowNpuHeap() if op_id == "heaps.resize" else None


def runner(root: Path, state_file: Path, dry_run: bool = False) -> PlayRunner:
    text, source = read_playbook_text("fresh-soc-board")
    book = parse_playbook(text, source, set(check_ids()), set())
    return PlayRunner(book, LocalTarget(str(root)), PlayState.load(state_file), DoctorOptions(), operation_for, dry_run)


def statuses(outcomes) -> dict[str, str]:
    return {o.step: o.status for o in outcomes}


def test_old_board_stops_for_reflash_then_resumes(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-old-kernel")
    state = tmp_path / "state.json"
    first = runner(root, state).run()
    assert statuses(first) == {"inspect": "done", "reflash": "stopped"}
    assert "flash a newer SDK image" in " ".join(first[-1].lines)

    # Rerun without reflashing: the recheck refuses to go on.
    second = runner(root, state).run()
    assert statuses(second) == {"inspect": "done", "reflash": "done earlier", "recheck-kernel": "failed"}

    # The user flashed the card: the board now reports a 2024 kernel.
    (root / "proc/sys/kernel/version").write_text("#1 SMP Thu Aug 15 10:20:28 CST 2024\n")
    third = runner(root, state).run()
    assert statuses(third) == {"inspect": "done", "reflash": "skipped", "recheck-kernel": "skipped",
                               "heaps": "done", "verify": "done"}  # inspect re-read the board: new kernel
    assert (root / HEAP.lstrip("/")).read_text().strip() == str(7615 << 20)

    # Everything done: a rerun re-reads the board, changes nothing, and the final doctor runs.
    assert statuses(runner(root, state).run()) == {"inspect": "done", "reflash": "skipped",
                                                   "recheck-kernel": "skipped", "heaps": "skipped", "verify": "done"}


def test_dry_run_plans_and_writes_nothing(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    (root / HEAP.lstrip("/")).write_text(f"{3950 << 20}\n")
    state = tmp_path / "state.json"
    outcomes = runner(root, state, dry_run=True).run()
    assert statuses(outcomes)["heaps"] == "planned"
    assert any("npu heap" in line for line in outcomes[-2].lines)
    assert (root / HEAP.lstrip("/")).read_text() == f"{3950 << 20}\n"
    assert not state.exists()


def test_healthy_board_skips_what_it_does_not_need(sysroot, tmp_path: Path) -> None:
    outcomes = runner(sysroot("soc-board-ok"), tmp_path / "s.json").run()
    assert statuses(outcomes) == {"inspect": "done", "reflash": "skipped", "recheck-kernel": "skipped",
                                  "heaps": "skipped", "verify": "done"}
