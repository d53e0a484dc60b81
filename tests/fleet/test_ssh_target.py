"""The SSH target against real sshd: the same doctor answers as the local target on every sample
and every doctor case, in one remote command; commands, writes, put/get; the SFTP fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.ssh import SSHError, SSHTarget
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


def test_without_python_a_machine_is_read_over_sftp_and_a_root_is_refused(sshd_farm, board, tmp_path: Path) -> None:
    """SFTP and the remote shell follow the board's links out of a root, so root=DIR needs the
    remote program; the machine itself (root /) is read one SFTP request per operation."""
    options = options_for(sshd_farm, tmp_path / "own", python="/nonexistent/python3")
    with SSHTarget(spec_for(board, SAMPLES / "pcie-host-ok", name="host"), options) as target:
        with pytest.raises(SSHError, match="no python3 answered there .*needs it to keep every path inside the root"):
            run_doctor(target, DoctorOptions())
        with pytest.raises(SSHError, match="inside the root"):
            target.read_bytes("/proc/sys/kernel/version")  # the refusal stays: no SFTP under a root
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "file").write_text("content\n")
    (mine / "link").symlink_to("file")
    with SSHTarget(spec_for(board), options) as target:
        assert target.read_text(str(mine / "file")) == "content\n"
        assert target.readlink(str(mine / "link")) == "file"
        assert target.listdir(str(mine)) == ["file", "link"]
        target.write_atomic(str(mine / "new"), b"new", backup=False)
        assert (mine / "new").read_bytes() == b"new"
        assert target.round_trips > 3  # one request per operation: why the remote program exists


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


def sessions(board) -> int:
    """Remote commands and SFTP sessions the board's sshd started (its own log, not our count)."""
    log = board.log.read_text()
    return log.count("Starting session: command") + log.count("subsystem request for sftp")


def test_a_fleet_doctor_is_one_remote_command_per_board(sshd_farm, board, home: Path, cli) -> None:
    """Issue 17 item 2: connect, then one command (one login shell) for the whole doctor."""
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    inventory = home / "inv.ini"
    inventory.write_text(f"b1 ansible_host=127.0.0.1 ansible_port={board.port} ansible_user={board.user} "
                         f"ansible_ssh_private_key_file={sshd_farm.client_key}\n")
    before = sessions(board)
    code, out, err = cli("doctor", "--inventory", str(inventory), "--json")
    assert sessions(board) - before == 1, board.log.read_text()[-2000:]
    host = json.loads(out)["hosts"][0]
    assert host["error"] is None and host["round_trips"] == 1, err
    local = run_doctor(LocalTarget("/", name="b1"), DoctorOptions()).to_json()
    assert comparable(host["report"]) == comparable(local)


def test_the_doctors_commands_are_answered_from_the_prefetch(sshd_farm, board, tmp_path: Path) -> None:
    """dmesg (doctor/kernel_log.py) and bm_version (doctor/facts.py) run inside the prefetch's
    command; run() answers from it once, then runs for real again."""
    from llmtpu.doctor.facts import FACT_PATHS
    from llmtpu.doctor.kernel_log import read_kernel_log
    from llmtpu.target import TargetError

    with SSHTarget(spec_for(board), options_for(sshd_farm, tmp_path / "own")) as target:
        target.prefetch(FACT_PATHS)
        before = sessions(board)
        served = read_kernel_log(target)
        with pytest.raises(TargetError, match="bm_version: command not found"):
            target.run(["bm_version"], timeout=10)
        assert target.round_trips == 1 and sessions(board) == before
        again = read_kernel_log(target)  # not served twice: a real command
        assert target.round_trips == 2
    assert (served.source, served.problem) == (again.source, again.problem)
    assert (served.value is None) == (again.value is None)  # None where dmesg is restricted for this user
    if served.value and again.value:
        assert again.value.startswith(served.value[:200])
