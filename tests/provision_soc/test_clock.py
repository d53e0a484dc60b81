"""clock apply / persist / undo on copies of the SoC samples, against a driver stand-in."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.doctor.checks import SEED_DOWNCLOCK
from llmtpu.provision.clock import (
    UNIT_PATH,
    WANTS_LINK,
    ClockApply,
    ClockPersist,
    pending_records,
    unit_text,
)
from llmtpu.provision.operation import Journal, OperationError, confirm
from llmtpu.target import LocalTarget
from tests.provision_soc.kernel import TOP_CLOCK, BoardWithDriver, FakeClockDriver

DEFAULTS = {"mpll_clock": 2_300_000_000, "tpll_clock": 950_000_000, "vpll_clock": 800_000_000}
SEED = {"mpll_clock": 1_800_000_000, "tpll_clock": 750_000_000, "vpll_clock": 100_000_000}


@pytest.fixture
def board(sysroot, monkeypatch) -> tuple[Path, FakeClockDriver]:
    """soc-board-ok with the driver stand-in; the CLI's LocalTarget gets it too."""
    root = sysroot("soc-board-ok")
    driver = FakeClockDriver(root)
    monkeypatch.setattr("llmtpu.target.LocalTarget", lambda path: BoardWithDriver(path, driver))
    return root, driver


def board_target(root: Path, driver: FakeClockDriver) -> LocalTarget:
    return BoardWithDriver(str(root), driver)


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def apply(op, target: LocalTarget) -> None:
    plan = op.plan(target)
    op.apply(target, plan, Journal(target))


def test_apply_writes_one_line_per_write_with_newline_and_is_idempotent(board) -> None:
    root, driver = board
    target = board_target(root, driver)
    op = ClockApply()
    plan = op.plan(target)
    assert len(plan.changes) == 3
    op.apply(target, plan, Journal(target))
    assert op.verify(target) == []
    assert driver.rates() == SEED
    assert sorted(driver.writes) == sorted(f"setr {n} {r}\n".encode() for n, r in SEED.items())
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in driver.writes)
    again = op.plan(target)
    assert again.nothing_to_do and "nothing to do" in again.lines()[0]


def test_downclocked_sample_needs_nothing(sysroot) -> None:
    target = LocalTarget(str(sysroot("soc-board-downclocked")))
    assert ClockApply().plan(target).nothing_to_do


def test_undo_goes_back_to_the_rates_before_the_first_apply(board, capsys) -> None:
    root, driver = board
    target = board_target(root, driver)
    apply(ClockApply(), target)
    apply(ClockApply({"tpll_clock": 500_000_000}), target)
    assert driver.rates()["tpll_clock"] == 500_000_000
    code, out, _ = cli(["clock", "undo", "--root", str(root), "--yes"], capsys)
    assert code == 0, out
    assert driver.rates() == DEFAULTS
    assert pending_records(target) == []
    assert all(r.undone for r in Journal(target).records())
    code, out, _ = cli(["clock", "undo", "--root", str(root), "--yes"], capsys)
    assert code == 0 and "nothing to undo" in out


def test_cli_apply_twice_then_show(board, capsys) -> None:
    root, driver = board
    code, out, _ = cli(["clock", "apply", "--root", str(root), "--dry-run"], capsys)
    assert code == 0 and "3 change(s)" in out and driver.writes == []
    code, out, err = cli(["clock", "apply", "--root", str(root), "--yes"], capsys)
    assert code == 0, err
    assert "done and verified" in out
    code, out, _ = cli(["clock", "apply", "--root", str(root), "--yes"], capsys)
    assert code == 0 and "nothing to do" in out and len(driver.writes) == 3
    code, out, _ = cli(["clock", "show", "--root", str(root), "--json"], capsys)
    doc = json.loads(out)
    assert doc["rates_hz"] == SEED and sorted(doc["differs"]) == sorted(SEED)
    assert doc["undo_pending"] == ["clock.apply"]


def test_cli_refuses_without_confirmation_and_bad_rates(board, capsys, monkeypatch) -> None:
    root, driver = board
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    code, _, err = cli(["clock", "apply", "--root", str(root)], capsys)
    assert code == 64 and "--yes" in err and driver.writes == []
    code, _, err = cli(["clock", "apply", "--root", str(root), "--tpll", "3000000000Hz"], capsys)
    assert code == 64 and "above the board's default" in err and driver.writes == []  # usage error, no write
    with pytest.raises(OperationError):
        confirm([ClockApply().plan(LocalTarget(str(root)))], assume_yes=False, stdin=io.StringIO(""))


def test_show_says_which_rates_differ(sysroot, capsys) -> None:
    code, out, _ = cli(["clock", "show", "--root", str(sysroot("soc-board-ok")), "--json"], capsys)
    assert code == 0 and json.loads(out)["differs"] == []
    code, out, _ = cli(["clock", "show", "--root", str(sysroot("soc-board-downclocked"))], capsys)
    assert code == 0 and out.count("differs") == 3


def run_unit_at_boot(root: Path, driver: FakeClockDriver) -> None:
    """What systemd would run: each ExecStart, with the machine path mapped into the sysroot."""
    for line in (root / UNIT_PATH.lstrip("/")).read_text().splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line[len("ExecStart="):])
            argv[-1] = argv[-1].replace("/" + TOP_CLOCK, str(root / TOP_CLOCK))
            driver.expect_truncating_write()
            subprocess.run(argv, check=True, timeout=10)
            driver.take_writes()


def test_persist_installs_enables_and_undo_removes(board) -> None:
    root, driver = board
    target = board_target(root, driver)
    op = ClockPersist()
    plan = op.plan(target)
    assert len(plan.changes) == 2
    assert any("NOT run" in note for note in plan.notes)
    op.apply(target, plan, Journal(target))
    assert op.verify(target) == []
    unit = (root / UNIT_PATH.lstrip("/")).read_text()
    assert "After=bmrt_setup.service" in unit and "Type=oneshot" in unit
    assert (root / WANTS_LINK.lstrip("/")).is_symlink()
    assert target.readlink(WANTS_LINK) == UNIT_PATH
    assert op.plan(target).nothing_to_do
    run_unit_at_boot(root, driver)  # a reboot: the unit writes the seed's rates, each line with its newline
    assert driver.rates() == SEED
    assert all(w.endswith(b"\n") for w in driver.writes)
    [record] = pending_records(target)
    op.undo(target, record)
    assert not (root / UNIT_PATH.lstrip("/")).exists()
    assert not (root / WANTS_LINK.lstrip("/")).is_symlink()


def test_persist_over_an_existing_unit_restores_it_on_undo(board) -> None:
    root, driver = board
    target = board_target(root, driver)
    old = unit_text({"tpll_clock": 600_000_000})
    unit_file = root / UNIT_PATH.lstrip("/")
    unit_file.parent.mkdir(parents=True, exist_ok=True)
    unit_file.write_text(old)
    op = ClockPersist()
    apply(op, target)
    assert unit_file.read_text() == unit_text(SEED_DOWNCLOCK)
    [record] = pending_records(target)
    assert record.undo["backup"]
    op.undo(target, record)
    assert unit_file.read_text() == old
    assert not (root / WANTS_LINK.lstrip("/")).is_symlink()
