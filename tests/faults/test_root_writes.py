"""Writes under --root stay inside the root (issue 11 item 11).

Before the fix, ``etc/systemd -> /elsewhere`` made ``clock persist --root`` write its unit there
and a linked ``sys/kernel/debug/top/clock`` made ``clock apply`` append to a file of this
machine. Here the real CLI runs on such sysroots; an inotify watch on the outside proves nothing
there was opened or created, and the planted victim file keeps its content. Folders that are
links are followed *inside* the root (where they lead on the machine the sysroot stands for);
a last component that is a link is replaced (unit, wants link) or refused (append), never
written through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.doctor.checks import SEED_DOWNCLOCK
from llmtpu.provision.clock import UNIT_NAME, UNIT_PATH, WANTS_LINK, unit_text
from llmtpu.target import LocalTarget, PathRefused
from tests.faults.test_root_reads import Hostile, swapping
from tests.faults.test_root_watch import OutsideWatch

VICTIM_TEXT = "a file of this machine that llmtpu must never change\n"


@pytest.fixture
def hostile(tmp_path: Path) -> Hostile:
    board = Hostile(tmp_path, "soc-board-ok")  # default rates: apply has work to do
    (board.outside / "victim").write_text(VICTIM_TEXT)
    return board


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out + err


def in_root(hostile: Hostile, host_path: Path) -> Path:
    """Where an absolute link to ``host_path`` leads inside the root."""
    return hostile.root / str(host_path).lstrip("/")


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_clock_persist_and_undo_through_a_linked_etc_systemd(hostile: Hostile, capsys, how: str) -> None:
    elsewhere = hostile.outside / "systemd"
    text = str(elsewhere) if how == "absolute" else hostile.climbing("/etc/systemd", elsewhere)
    hostile.link("/etc/systemd", text)
    with OutsideWatch(hostile.outside) as watch:
        code, output = cli(capsys, "clock", "persist", "--root", str(hostile.root), "--yes")
        assert code == 0, output
        hostile.assert_untouched(watch, output)
        assert not elsewhere.exists()
        # On the machine the sysroot stands for, /etc/systemd leads to <elsewhere>: so does the unit.
        landed = (in_root(hostile, elsewhere) if how == "absolute"
                  else hostile.root / os.path.relpath(elsewhere, hostile.root.parent))
        assert (landed / "system" / UNIT_NAME).read_text() == unit_text(SEED_DOWNCLOCK)
        assert os.readlink(landed / "system/multi-user.target.wants" / UNIT_NAME) == UNIT_PATH
        code, output = cli(capsys, "clock", "undo", "--root", str(hostile.root), "--yes")
        assert code == 0, output
        hostile.assert_untouched(watch, output)
    assert not (landed / "system" / UNIT_NAME).exists()
    assert not (landed / "system/multi-user.target.wants" / UNIT_NAME).exists()


def test_clock_persist_replaces_a_linked_unit_and_wants_folder_never_writing_through(
        hostile: Hostile, capsys) -> None:
    hostile.link(UNIT_PATH, str(hostile.outside / "victim"))
    hostile.link(WANTS_LINK.rsplit("/", 1)[0], str(hostile.outside))
    with OutsideWatch(hostile.outside) as watch:
        code, output = cli(capsys, "clock", "persist", "--root", str(hostile.root), "--yes")
        hostile.assert_untouched(watch, output)
    assert code == 0, output
    assert (hostile.outside / "victim").read_text() == VICTIM_TEXT
    unit = hostile.root / UNIT_PATH.lstrip("/")
    assert not unit.is_symlink() and unit.read_text() == unit_text(SEED_DOWNCLOCK)
    # The replaced link is kept as the link it was, so undo can put it back.
    backups = list((hostile.root / "var/lib/llmtpu/backups").rglob(UNIT_NAME))
    assert len(backups) == 1 and os.readlink(backups[0]) == str(hostile.outside / "victim")
    assert os.readlink(in_root(hostile, hostile.outside) / UNIT_NAME) == UNIT_PATH
    assert sorted(p.name for p in hostile.outside.iterdir()) == ["id_ed25519", "version", "victim"]


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_clock_apply_refuses_a_linked_debugfs_clock_file(hostile: Hostile, capsys, how: str) -> None:
    clock = "/sys/kernel/debug/top/clock"
    victim = hostile.outside / "victim"
    hostile.link(clock, str(victim) if how == "absolute" else hostile.climbing(clock, victim))
    hostile.link("/var/lib/llmtpu", str(hostile.outside / "state"))  # the journal's folder, too
    with OutsideWatch(hostile.outside) as watch:
        code, output = cli(capsys, "clock", "apply", "--root", str(hostile.root), "--yes")
        hostile.assert_untouched(watch, output)
    assert code == 2, output
    assert f"{clock} failed: is a symbolic link; llmtpu does not write through links" in output
    assert victim.read_text() == VICTIM_TEXT
    assert not (hostile.outside / "state").exists()
    # The journal record (made before the first write, so undo knows the way back) is inside the root.
    assert list((in_root(hostile, hostile.outside / "state") / "journal").glob("*.json"))


def test_append_refuses_a_link_on_the_real_root_too(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text(VICTIM_TEXT)
    (tmp_path / "clock").symlink_to(victim)
    with pytest.raises(PathRefused, match="is a symbolic link"):
        LocalTarget("/").append(str(tmp_path / "clock"), b"setr tpll_clock 1\n")
    assert victim.read_text() == VICTIM_TEXT


def test_a_link_swapped_in_during_writes_never_leads_out(hostile: Hostile) -> None:
    """write_atomic, append, makedirs, symlink and remove while ``etc`` and ``top`` flip to links."""
    outside_etc = hostile.outside / "etc"
    (outside_etc / "systemd/system").mkdir(parents=True)
    (outside_etc / "systemd/system" / UNIT_NAME).write_text(VICTIM_TEXT)
    (hostile.outside / "top").mkdir()
    (hostile.outside / "top" / "clock").write_text(VICTIM_TEXT)
    (hostile.root / "etc/systemd/system").mkdir(parents=True)
    target = LocalTarget(str(hostile.root))
    swaps = [swapping(hostile.root / "etc", outside_etc),
             swapping(hostile.root / "sys/kernel/debug/top", hostile.outside / "top")]
    with OutsideWatch(hostile.outside) as watch:
        for _, thread in swaps:
            thread.start()
        try:
            for i in range(300):
                for step in (lambda i=i: target.write_atomic(UNIT_PATH, f"{i}\n".encode(), backup=i % 2 == 0),
                             lambda: target.append("/sys/kernel/debug/top/clock", b"setr tpll_clock 1\n"),
                             lambda: target.makedirs("/etc/systemd/system/multi-user.target.wants"),
                             lambda: target.symlink(UNIT_PATH, WANTS_LINK),
                             lambda: target.remove(WANTS_LINK)):
                    try:
                        step()
                    except OSError:
                        pass  # the folder was mid-swap: an error, never a write elsewhere
        finally:
            for stop, thread in swaps:
                stop.set()
                thread.join()
        hostile.assert_untouched(watch)
    assert (outside_etc / "systemd/system" / UNIT_NAME).read_text() == VICTIM_TEXT
    assert (hostile.outside / "top" / "clock").read_text() == VICTIM_TEXT


def test_undo_reads_only_the_roots_own_journal(tmp_path: Path, capsys) -> None:
    """A journal folder linked out of the root must not hand undo someone else's records."""
    (tmp_path / "donor").mkdir()
    (tmp_path / "board").mkdir()
    donor = Hostile(tmp_path / "donor", "soc-board-ok")
    code, output = cli(capsys, "clock", "persist", "--root", str(donor.root), "--yes")
    assert code == 0, output
    hostile = Hostile(tmp_path / "board", "soc-board-ok")
    os.rename(donor.root / "var/lib/llmtpu", hostile.outside / "state")  # a real record, outside
    hostile.link("/var/lib/llmtpu", str(hostile.outside / "state"))
    with OutsideWatch(hostile.outside) as watch:
        undo_code, undo_output = cli(capsys, "undo", "--root", str(hostile.root), "--yes")
        clock_code, clock_output = cli(capsys, "clock", "undo", "--root", str(hostile.root), "--yes")
        hostile.assert_untouched(watch, undo_output, clock_output)
    assert "nothing to undo" in undo_output and undo_code != 0
    assert "nothing to undo" in clock_output and clock_code == 0
