"""The bounded pool itself: a host that hangs after login is cut off at its deadline, live
progress draws on a terminal, secrets never show, ~/.ssh/config aliases and ProxyJump work."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import psutil
from rich.console import Console

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.fleet import DONE, GRACE, live_progress, run_on_hosts
from llmtpu.ssh import PASSWORD_ENV, SSHOptions
from tests.fleet.conftest import SAMPLES, options_for, spec_for


def test_a_host_that_hangs_after_login_is_cut_off_at_its_deadline(sshd_farm, tmp_path: Path) -> None:
    fine, hung = sshd_farm.add("fine"), sshd_farm.add("hung")
    specs = [spec_for(fine, SAMPLES / "soc-board-ok"), spec_for(hung, SAMPLES / "soc-board-ok")]
    options = options_for(sshd_farm, tmp_path / "own", command_timeout=1.5)

    frozen: list[psutil.Process] = []

    def work(target):
        if target.name == "hung":  # logged in, then the board stops answering: freeze its sessions
            frozen.extend(psutil.Process(hung.process.pid).children(recursive=True))
            for process in frozen:
                process.suspend()
        return run_doctor(target, DoctorOptions())

    start = time.monotonic()
    try:
        results = run_on_hosts(specs, work, options, parallel=2)
        elapsed = time.monotonic() - start
    finally:
        for process in frozen:
            if process.is_running():
                process.resume()
    assert [r.status for r in results] == [DONE, "timed-out"], results[1].error
    assert results[0].value is not None and results[0].value.verdict == "ok"
    assert elapsed < 1.5 + GRACE + 5, elapsed


def test_more_hosts_than_threads_and_progress_on_a_terminal(sshd_farm, tmp_path: Path) -> None:
    boards = [sshd_farm.add(f"p{i}") for i in range(4)]
    specs = [spec_for(b, SAMPLES / "pcie-host-ok") for b in boards]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with live_progress(len(specs), console) as (on_start, on_done):
        results = run_on_hosts(specs, lambda t: t.read_text("/proc/bmsophon/card_num"),
                               options_for(sshd_farm, tmp_path / "own"), parallel=2, on_start=on_start,
                               on_done=on_done)
    assert [r.value for r in results] == ["1\n"] * 4 and [r.spec.name for r in results] == ["p0", "p1", "p2", "p3"]
    assert "4 hosts" in screen.getvalue()


def test_secrets_come_from_the_environment_and_never_show() -> None:
    password, passphrase = SSHOptions.secrets_from({PASSWORD_ENV: "hunter2"})
    assert password == "hunter2" and passphrase is None
    options = SSHOptions(password=password, passphrase="pass-phrase")
    assert "hunter2" not in repr(options) and "pass-phrase" not in repr(options)


def test_ssh_config_alias_with_proxyjump_end_to_end(sshd_farm, home: Path, tmp_path: Path, cli) -> None:
    bastion, board = sshd_farm.add("bastion"), sshd_farm.add("hidden")
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host airbox-7\n  HostName 127.0.0.1\n  Port {board.port}\n  User {board.user}\n  ProxyJump gw\n"
        f"Host gw\n  HostName 127.0.0.1\n  Port {bastion.port}\n  User {bastion.user}\n"
        f"Host *\n  IdentityFile {sshd_farm.client_key}\n")
    code, out, err = cli("doctor", "--hosts", "airbox-7", "--ssh-config", str(config), "--json")
    host = json.loads(out)["hosts"][0]
    assert host["status"] == "checked", host["error"]
    assert host["jump"] == [f"{bastion.user}@127.0.0.1:{bastion.port}"] and host["port"] == board.port
    # this machine's own / read over SSH: no Sophgo device here, and that is a result, not an error
    assert host["report"]["root"] == "/" and host["report"]["machine_kind"] == "none"
    assert host["round_trips"] <= 2, host["round_trips"]  # prefetch (+ df of the models folder)
    assert code == 2
