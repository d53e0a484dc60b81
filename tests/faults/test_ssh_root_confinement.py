"""An SSH host with root=DIR stays inside DIR on the board (issue 11 item 11, for SSH targets).

The same hostile sysroots as tests/faults/test_root_reads.py and test_root_writes.py, served by a
real sshd board: links to the board's own /proc/sys/kernel/version, to a private key in a folder
beside the root, ``etc/systemd`` leading out for a write, a linked debugfs clock file for an
append, pipes and device nodes. Every read and write goes through SSHTarget (the remote program
walks DIR with openat and O_NOFOLLOW); an inotify watch on the outside folder proves nothing there
was opened or changed, and the answers equal LocalTarget's on the same tree.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.ssh import SSHTarget
from llmtpu.target import LocalTarget, PathRefused
from tests.faults.test_root_reads import KEY_TEXT, Hostile
from tests.faults.test_root_watch import OutsideWatch
from tests.fleet.conftest import comparable, options_for, spec_for

VICTIM_TEXT = "a file of the board that llmtpu must never change\n"


@pytest.fixture
def hostile(tmp_path: Path) -> Hostile:
    board = Hostile(tmp_path, "soc-board-ok")
    (board.outside / "victim").write_text(VICTIM_TEXT)
    return board


@pytest.fixture
def board(sshd_farm):
    return sshd_farm.add("b1")


def target_for(sshd_farm, board, hostile: Hostile, tmp_path: Path) -> SSHTarget:
    return SSHTarget(spec_for(board, hostile.root, name="host"), options_for(sshd_farm, tmp_path / "own"))


def doctor_both(sshd_farm, board, hostile: Hostile, tmp_path: Path) -> dict:
    """The doctor over SSH, watched; it must equal the local doctor on the same tree."""
    with OutsideWatch(hostile.outside) as watch:
        with target_for(sshd_farm, board, hostile, tmp_path) as target:
            remote = run_doctor(target, DoctorOptions()).to_json()
        hostile.assert_untouched(watch, json.dumps(remote))
    local = run_doctor(LocalTarget(str(hostile.root), name="host"), DoctorOptions()).to_json()
    assert comparable(remote) == comparable(local)
    return {c["id"]: c for c in remote["checks"]}


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_a_key_linked_from_ld_so_conf_is_never_read(sshd_farm, board, hostile: Hostile, tmp_path: Path,
                                                    how: str) -> None:
    conf = "/etc/ld.so.conf.d/libsophon.conf"
    hostile.link(conf, str(hostile.key) if how == "absolute" else hostile.climbing(conf, hostile.key))
    assert (hostile.root / conf.lstrip("/")).read_text() == KEY_TEXT  # the board's kernel would follow it
    found = doctor_both(sshd_farm, board, hostile, tmp_path)
    assert conf in json.dumps(found["libsophon.install"]["evidence"])


@pytest.mark.parametrize("link", ["/proc/sys/kernel/version", "outside-version", "climbing"])
def test_the_sysroots_kernel_is_judged_not_the_boards(sshd_farm, board, hostile: Hostile, tmp_path: Path,
                                                      link: str) -> None:
    version = "/proc/sys/kernel/version"
    text = {"/proc/sys/kernel/version": version, "outside-version": str(hostile.outside / "version"),
            "climbing": hostile.climbing(version, hostile.outside / "version")}[link]
    hostile.link(version, text)
    found = doctor_both(sshd_farm, board, hostile, tmp_path)
    assert found["kernel.date"]["status"] != "ok"
    if link == "/proc/sys/kernel/version":  # names itself inside the root: a loop, said so
        assert "too many levels of symbolic links" in json.dumps(found["kernel.date"])


def test_reads_follow_links_inside_the_root_only(sshd_farm, board, hostile: Hostile, tmp_path: Path) -> None:
    inside = hostile.root / "srv" / "real"
    inside.mkdir(parents=True)
    (inside / "file").write_text("inside\n")
    hostile.link("/opt/abs", "/srv/real")  # absolute: a machine path, re-rooted at DIR
    hostile.link("/opt/up", "../../../../../../../srv/real")  # climbs past DIR: clamped at DIR
    hostile.link("/opt/out", str(hostile.outside))  # leads out on the board: inside DIR it is missing
    with OutsideWatch(hostile.outside) as watch:
        with target_for(sshd_farm, board, hostile, tmp_path) as target:
            assert target.read_text("/opt/abs/file") == "inside\n"
            assert target.read_text("/opt/up/file") == "inside\n"
            assert target.listdir("/opt/abs") == ["file"]
            with pytest.raises(FileNotFoundError):
                target.read_bytes("/opt/out/id_ed25519")
            with pytest.raises(FileNotFoundError):
                target.listdir("/opt/out")
            assert target.disk_usage("/opt/abs").total > 0
            assert target.resolve("/opt/up/file") == "/srv/real/file"
        hostile.assert_untouched(watch)


def test_pipes_and_devices_under_the_root_are_refused_not_opened(sshd_farm, board, hostile: Hostile,
                                                                 tmp_path: Path) -> None:
    fifo = hostile.root / "proc/sys/kernel/version"
    fifo.unlink()
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes: a read would wait
    try:
        with target_for(sshd_farm, board, hostile, tmp_path) as target:
            started = time.monotonic()
            with pytest.raises(PathRefused, match="is a fifo, not a regular file"):
                target.read_bytes("/proc/sys/kernel/version")
            if os.geteuid() == 0:
                (hostile.root / "proc/cpuinfo").unlink(missing_ok=True)
                os.mknod(hostile.root / "proc/cpuinfo", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
                with pytest.raises(PathRefused, match="is a char, not a regular file"):
                    target.read_bytes("/proc/cpuinfo")
            assert time.monotonic() - started < 10
    finally:
        os.close(writer)


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_a_write_through_a_linked_etc_systemd_lands_inside_the_root(sshd_farm, board, hostile: Hostile,
                                                                    tmp_path: Path, how: str) -> None:
    elsewhere = hostile.outside / "systemd"
    hostile.link("/etc/systemd", str(elsewhere) if how == "absolute" else hostile.climbing("/etc/systemd", elsewhere))
    unit = "/etc/systemd/system/llmtpu-clock.service"
    with OutsideWatch(hostile.outside) as watch:
        with target_for(sshd_farm, board, hostile, tmp_path) as target:
            target.write_atomic(unit, b"[Unit]\n", backup=True)
            target.makedirs("/etc/systemd/system/multi-user.target.wants")
            target.symlink(unit, "/etc/systemd/system/multi-user.target.wants/llmtpu-clock.service")
            assert target.read_text(unit) == "[Unit]\n"
            assert target.write_atomic(unit, b"[Unit]\nnew\n", backup=True) is not None
        hostile.assert_untouched(watch)
    assert not elsewhere.exists()
    landed = (hostile.root / str(elsewhere).lstrip("/") if how == "absolute"
              else hostile.root / os.path.relpath(elsewhere, hostile.root.parent))
    assert (landed / "system/llmtpu-clock.service").read_text() == "[Unit]\nnew\n"
    assert (landed / "system/multi-user.target.wants/llmtpu-clock.service").is_symlink()


def test_a_last_name_that_is_a_link_is_replaced_or_refused_never_written_through(
        sshd_farm, board, hostile: Hostile, tmp_path: Path) -> None:
    victim = hostile.outside / "victim"
    clock = "/sys/kernel/debug/top/clock"
    hostile.link(clock, str(victim))
    hostile.link("/etc/motd", str(victim))
    hostile.link("/etc/issue", str(victim))
    payload = tmp_path / "payload"
    payload.write_bytes(b"payload")
    with OutsideWatch(hostile.outside) as watch:
        with target_for(sshd_farm, board, hostile, tmp_path) as target:
            with pytest.raises(PathRefused, match="is a symbolic link; llmtpu does not write through links"):
                target.append(clock, b"setr tpll_clock 1\n")
            backup = target.write_atomic("/etc/motd", b"motd\n", backup=True)
            assert backup is not None and target.readlink(backup) == str(victim)  # the link kept as a link
            target.remove("/etc/issue")
            hostile.link("/etc/payload", str(victim))
            target.put(payload, "/etc/payload", mode=0o600)  # replaces the link, not what it names
        hostile.assert_untouched(watch)
    assert victim.read_text() == VICTIM_TEXT
    assert (hostile.root / "etc/motd").read_text() == "motd\n"
    assert (hostile.root / "etc/payload").read_bytes() == b"payload"
    assert not (hostile.root / "etc/issue").exists() and not (hostile.root / "etc/issue").is_symlink()
