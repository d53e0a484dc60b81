"""The SSH target against real sshd: the same doctor answers as the local target on every sample
and every doctor case, in one remote command; commands, writes, put/get; the SFTP fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.ssh import SSHTarget
from llmtpu.target import LocalTarget
from tests.fleet.conftest import SAMPLES, comparable, options_for, spec_for
from tests.test_doctor_cases import CASES, apply_edit

SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())



@pytest.fixture
def board(sshd_farm):
    return sshd_farm.add("b1")


def test_doctor_over_ssh_equals_local_on_every_sample(sshd_farm, board, tmp_path: Path) -> None:
    options = options_for(sshd_farm, tmp_path / "own")
    for name in SAMPLE_NAMES:
        root = SAMPLES / name
        with SSHTarget(spec_for(board, root, name="host"), options) as target:
            remote = run_doctor(target, DoctorOptions())
            # connect, then the prefetch and the free space of / (in the same command): one round trip
            assert target.round_trips == 1, name
        local = run_doctor(LocalTarget(str(root), name="host"), DoctorOptions())
        assert comparable(remote.to_json()) == comparable(local.to_json()), name
        golden = json.loads((SAMPLES.parent / "golden" / f"{name}.json").read_text())
        assert remote.verdict == golden["verdict"]


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_doctor_case_over_ssh(case_file: Path, sshd_farm, sysroot, tmp_path: Path) -> None:
    """Every data-driven doctor case, read over SSH, gives the local target's statuses."""
    case = json.loads(case_file.read_text())
    root = sysroot(case["sample"])
    for edit in case.get("edits", []):
        apply_edit(root, edit)
    board = sshd_farm.add("b1")
    options = DoctorOptions(**case.get("options", {}))
    with SSHTarget(spec_for(board, root, name="host"), options_for(sshd_farm, tmp_path / "own")) as target:
        remote = run_doctor(target, options)
        assert target.round_trips <= 3
    local = run_doctor(LocalTarget(str(root), name="host"), options)
    assert comparable(remote.to_json()) == comparable(local.to_json())
    assert {i: s for i, s in ((r.id, r.status) for r in remote.results) if i in case["expect"]} == case["expect"]


def test_without_python_every_read_goes_over_sftp_with_the_same_answers(sshd_farm, board, tmp_path: Path) -> None:
    root = SAMPLES / "pcie-host-ok"
    options = options_for(sshd_farm, tmp_path / "own", python="/nonexistent/python3")
    with SSHTarget(spec_for(board, root, name="host"), options) as target:
        remote = run_doctor(target, DoctorOptions())
        assert target.round_trips > 10  # one request per read: why the prefetch exists
    local = run_doctor(LocalTarget(str(root), name="host"), DoctorOptions())
    assert comparable(remote.to_json()) == comparable(local.to_json())


def test_reads_after_a_prefetch_cost_no_round_trip(sshd_farm, board, tmp_path: Path) -> None:
    root = SAMPLES / "soc-board-ok"
    with SSHTarget(spec_for(board, root), options_for(sshd_farm, tmp_path / "own")) as target:
        target.prefetch(["/proc", "/sys/kernel/debug", "/opt/sophon"])
        assert target.round_trips == 1
        assert target.read_text("/proc/sys/kernel/version").startswith("#1 SMP")
        assert target.resolve("/opt/sophon/libsophon-current/lib") == "/opt/sophon/libsophon-0.5.1/lib"
        assert "tpll_clock" in target.listdir("/sys/kernel/debug/clk")
        assert target.lstat("/nothing/here") is None and target.lstat("/proc/nothing") is None
        with pytest.raises(FileNotFoundError):
            target.read_bytes("/sys/kernel/debug/ion/none/total_mem")
        assert target.round_trips == 1
        assert target.read_text("/etc/ld.so.conf.d/libsophon.conf")  # not prefetched: one more
        assert target.round_trips == 2


def test_reads_are_capped_and_bigger_reads_fetch_again(sshd_farm, board, sysroot, tmp_path: Path) -> None:
    root = sysroot("pcie-host-ok")
    (root / "big").write_bytes(b"x" * (3 << 20))
    with SSHTarget(spec_for(board, root), options_for(sshd_farm, tmp_path / "own")) as target:
        target.prefetch(["/"])
        assert len(target.read_bytes("/big", limit=100)) == 100
        assert len(target.read_bytes("/big", limit=5 << 20)) == 3 << 20
        with pytest.raises(IsADirectoryError):
            target.read_bytes("/proc")


def test_commands_are_argument_lists_never_shell_text(sshd_farm, board, tmp_path: Path) -> None:
    with SSHTarget(spec_for(board), options_for(sshd_farm, tmp_path / "own")) as target:
        tricky = "a b; touch /tmp/pwned-llmtpu $(id) 'q' \"dq\" \\ `x` *"
        result = target.run(["printf", "%s|", tricky, "two"])
        assert result.ok and result.text() == f"{tricky}|two|"
        assert not Path("/tmp/pwned-llmtpu").exists()
        assert target.run(["sh", "-c", "exit 7"]).returncode == 7
        assert target.run(["cat"], input=b"from stdin").stdout == b"from stdin"
        assert target.run(["sh", "-c", 'printf %s "$X"'], env={"X": "v a l"}).text() == "v a l"
        slow = target.run(["sleep", "5"], timeout=0.5)
        assert slow.timed_out and not slow.ok
        assert target.run(["true"]).ok  # the connection survived the timeout
        from llmtpu.target import TargetError

        with pytest.raises(TargetError, match="command not found"):
            target.run(["llmtpu-no-such-command"])


def test_atomic_write_with_backup_put_and_get(sshd_farm, board, sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    with SSHTarget(spec_for(board, root), options_for(sshd_farm, tmp_path / "own")) as target:
        assert target.read_text("/etc/ld.so.conf.d/libsophon.conf")
        backup = target.write_atomic("/etc/ld.so.conf.d/libsophon.conf", b"/new/lib\n", mode=0o640)
        assert backup is not None and backup.startswith("/var/lib/llmtpu/backups/")
        assert (root / backup.lstrip("/")).read_text() == "/opt/sophon/libsophon-current/lib\n"
        assert target.read_text("/etc/ld.so.conf.d/libsophon.conf") == "/new/lib\n"  # cache forgot the old
        assert (root / "etc/ld.so.conf.d/libsophon.conf").stat().st_mode & 0o777 == 0o640
        target.prefetch(["/etc"])
        assert target.write_atomic("/new/folder/file", b"x", backup=True) is None
        assert target.read_text("/new/folder/file") == "x" and target.listdir("/new") == ["folder"]
        assert not [p for p in (root / "etc/ld.so.conf.d").iterdir() if p.name.startswith(".llmtpu-")]
        local = tmp_path / "payload.bin"
        local.write_bytes(bytes(range(256)) * 1000)
        target.put(local, "/opt/payload.bin", mode=0o600)
        assert (root / "opt/payload.bin").read_bytes() == local.read_bytes()
        fetched = target.get("/opt/payload.bin", tmp_path / "back.bin")
        assert fetched.read_bytes() == local.read_bytes()


def test_append_remove_symlink_makedirs_over_ssh(sshd_farm, board, sysroot, tmp_path: Path) -> None:
    """The small writes operations need (a debugfs command line, a systemd wants/ link), over SFTP."""
    root = sysroot("soc-board-ok")
    with SSHTarget(spec_for(board, root), options_for(sshd_farm, tmp_path / "own")) as target:
        target.append("/sys/kernel/debug/top/clock", b"setr tpll_clock 750000000\n")
        target.makedirs("/etc/systemd/system/multi-user.target.wants")
        target.symlink("/etc/systemd/system/x.service", "/etc/systemd/system/multi-user.target.wants/x.service")
        target.symlink("/etc/systemd/system/y.service", "/etc/systemd/system/multi-user.target.wants/x.service")
        assert target.readlink("/etc/systemd/system/multi-user.target.wants/x.service") == \
            "/etc/systemd/system/y.service"
        target.remove("/etc/systemd/system/multi-user.target.wants/x.service")
        target.remove("/etc/systemd/system/multi-user.target.wants/x.service")  # already gone: fine
        assert target.lstat("/etc/systemd/system/multi-user.target.wants/x.service") is None
    assert (root / "sys/kernel/debug/top/clock").read_bytes().endswith(b"------\nsetr tpll_clock 750000000\n")
