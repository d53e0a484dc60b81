"""Issue 14 item 6: a playbook rerun re-verifies instead of trusting its state file.

After fix-garbage-output completed and `clock undo` put the board back at 950 MHz (all "!"
again), the next run must run the smoke test again, search again and persist again; a rerun
on a board that is still fine runs the final doctor and changes nothing. The engine is the
stand-in of test_clock_search.py, whose output turns to "!" above the rate the test picks.
"""

from __future__ import annotations

from pathlib import Path

from llmtpu.provision.clock import CLOCK_OPERATIONS, UNIT_PATH, pending_records
from tests.playbook.test_clock_search import TPLL_RATE, run_playbook, stand_in_engine
from tests.provision_soc.kernel import BoardWithDriver, FakeClockDriver


def test_after_clock_undo_the_rerun_searches_and_persists_again(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, 800_000_000)
    state = tmp_path / "state.json"
    statuses, _ = run_playbook(root, engine, state)
    assert statuses == {"smoke": "done", "search": "done", "verify": "done"}
    assert (root / TPLL_RATE).read_text().strip() == "800000000"

    board = BoardWithDriver(str(root), FakeClockDriver(root))
    for record in pending_records(board):  # what `llmtpu clock undo --yes` does
        CLOCK_OPERATIONS[record.operation]().undo(board, record)
    assert (root / TPLL_RATE).read_text().strip() == "950000000"
    assert not (root / UNIT_PATH.lstrip("/")).exists()

    statuses, outcomes = run_playbook(root, engine, state)
    assert statuses == {"smoke": "done", "search": "done", "verify": "done"}, outcomes
    assert "done earlier" not in statuses.values()
    assert (root / TPLL_RATE).read_text().strip() == "800000000"
    assert "setr tpll_clock 800000000" in (root / UNIT_PATH.lstrip("/")).read_text()


def test_rerun_on_a_board_still_fine_runs_the_final_doctor_and_changes_nothing(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, 800_000_000)
    state = tmp_path / "state.json"
    run_playbook(root, engine, state)
    unit = (root / UNIT_PATH.lstrip("/")).read_bytes()
    statuses, outcomes = run_playbook(root, engine, state)
    assert statuses == {"smoke": "done", "search": "skipped", "verify": "done"}, outcomes
    verify = next(o for o in outcomes if o.step == "verify")
    assert any(line.startswith("smoke.inference: ok") for line in verify.lines)
    assert (root / UNIT_PATH.lstrip("/")).read_bytes() == unit
