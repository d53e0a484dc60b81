"""`llmtpu doctor --inventory` against 8 real sshd boards, mixed PCIe/SoC: one down, one with a
changed host key, one frozen past the timeout, one refusing our login. The others are checked
as if local, the four are reported as what they are, and the run takes about as long as the
slowest board we wait for. Also: boards on their own addresses in network namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.fleet_render import summary_line
from llmtpu.doctor.report import run_doctor
from llmtpu.fleet import DONE, HostResult
from llmtpu.inventory import HostSpec
from llmtpu.target import LocalTarget
from tests.fleet.conftest import SAMPLES, comparable, rekey
from tests.sshd import keygen

CONNECT_TIMEOUT = 2.0

#: name, group, sample, what happens to it
BOARDS = [
    ("pcie-ok", "pcie", "pcie-host-ok", None),
    ("pcie-old", "pcie", "pcie-host-old-driver", None),
    ("soc-ok", "soc", "soc-board-ok", None),
    ("soc-slowclk", "soc", "soc-board-downclocked", None),
    ("soc-dead", "soc", "soc-board-ok", "down"),
    ("pcie-rekeyed", "pcie", "pcie-host-ok", "changed key"),
    ("soc-frozen", "soc", "soc-board-old-kernel", "frozen"),
    ("pcie-locked", "pcie", "pcie-docker-no-libsophon", "login fails"),
]
EXPECTED_STATUS = {"down": "unreachable", "changed key": "host-key-changed", "frozen": "timed-out",
                   "login fails": "auth-failed", None: "checked"}



@pytest.fixture
def fleet(sshd_farm, home: Path, tmp_path: Path) -> Path:
    """The 8 boards, an INI inventory for them, and HOME's known_hosts = the farm's."""
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    wrong_key = tmp_path / "not_authorized"
    keygen(wrong_key, "stranger")
    boards = {name: sshd_farm.add(name) for name, *_ in BOARDS}
    groups: dict[str, list[str]] = {}
    for name, group, sample, fate in BOARDS:
        board = boards[name]
        key = wrong_key if fate == "login fails" else sshd_farm.client_key
        groups.setdefault(group, []).append(
            f"{name} ansible_host=127.0.0.1 ansible_port={board.port} root={SAMPLES / sample} "
            f"ansible_ssh_private_key_file={key}")
    for name, _, _, fate in BOARDS:
        if fate == "down":
            sshd_farm.stop(boards[name])
        elif fate == "changed key":
            rekey(sshd_farm, boards[name])
        elif fate == "frozen":
            sshd_farm.pause(boards[name])
    inventory = tmp_path / "inv.ini"
    inventory.write_text("".join(f"[{g}]\n" + "\n".join(lines) + "\n\n" for g, lines in groups.items())
                         + f"[all:vars]\nansible_user={boards['pcie-ok'].user}\n")
    return inventory


def expected_summary() -> str:
    """The summary the fleet must print, built from local doctor runs of the same samples."""
    results: list[HostResult] = []
    for name, _, sample, fate in BOARDS:
        spec = HostSpec(name=name, hostname="127.0.0.1")
        if fate is None:
            report = run_doctor(LocalTarget(str(SAMPLES / sample), name=name), DoctorOptions())
            results.append(HostResult(spec, DONE, report))
        else:
            results.append(HostResult(spec, EXPECTED_STATUS[fate]))
    return summary_line(results)


def test_eight_boards_json_matrix_and_summary(fleet: Path, cli) -> None:
    start = time.monotonic()
    code, out, err = cli("doctor", "--inventory", str(fleet), "--json", "--connect-timeout", str(CONNECT_TIMEOUT),
                         "--timeout", "20")
    elapsed = time.monotonic() - start
    assert code == 3, err  # a host could not be checked
    document = json.loads(out)
    assert document["schema"] == "llmtpu.doctor.fleet/1" and document["exit_code"] == 3
    hosts = {h["name"]: h for h in document["hosts"]}
    assert list(hosts) == [name for group in ("pcie", "soc") for name, g, *_ in BOARDS if g == group]
    for name, _, sample, fate in BOARDS:
        host = hosts[name]
        assert host["status"] == EXPECTED_STATUS[fate], (name, host["error"])
        if fate is None:
            local = run_doctor(LocalTarget(str(SAMPLES / sample), name=name), DoctorOptions()).to_json()
            assert comparable(host["report"]) == comparable(local), name
            assert host["error"] is None and host["round_trips"] <= 3 and host["host_key"] == "known"
        else:
            assert host["report"] is None and host["error"]
    assert "HOST KEY CHANGED" in hosts["pcie-rekeyed"]["error"]
    assert "refused" in hosts["soc-dead"]["error"]
    assert document["summary"]["text"] == expected_summary()
    assert document["summary"]["not_checked"] == {"unreachable": 1, "host-key-changed": 1, "timed-out": 1,
                                                  "auth-failed": 1}
    # In parallel: the frozen board's connect timeout (plus the watchdog's grace) bounds the run,
    # not the sum of 8 boards. Generous slack for a loaded 2-core CI machine.
    assert elapsed < CONNECT_TIMEOUT + 6, elapsed
    assert hosts["soc-frozen"]["seconds"] >= CONNECT_TIMEOUT * 0.9


def test_eight_boards_for_people(fleet: Path, cli) -> None:
    code, out, err = cli("doctor", "--inventory", str(fleet), "--connect-timeout", str(CONNECT_TIMEOUT))
    assert code == 3
    for name, *_ in BOARDS:
        assert name in out
    assert "HOST KEY CHANGED" in out and "timed out" in out and "login refused" in out and "unreachable" in out
    assert "pcie-old: driver.date fail" in out
    assert f"summary: {expected_summary()}" in " ".join(out.split())
    # --limit: one group, and the worst of the hosts left decides the exit code
    code, out, _ = cli("doctor", "--inventory", str(fleet), "--limit", "pcie:!pcie-rekeyed:!pcie-locked", "--json")
    assert code == 2 and [h["name"] for h in json.loads(out)["hosts"]] == ["pcie-ok", "pcie-old"]
    code, out, _ = cli("doctor", "--inventory", str(fleet), "--limit", "soc-ok", "--json")
    assert code == 0


def test_usage_errors(fleet: Path, cli) -> None:
    assert cli("doctor", "--inventory", str(fleet), "--root", "/tmp")[0] == 64
    assert cli("doctor", "--limit", "x")[0] == 64
    code, _, err = cli("doctor", "--inventory", str(fleet), "--limit", "nomatch")
    assert code == 64 and "matches no host" in err
    assert cli("doctor", "--hosts", "a", "--parallel", "0")[0] == 64
    assert cli("doctor", "--inventory", str(fleet) + ".missing")[0] == 64


def end_sessions(board) -> None:
    """A board's login sessions must end before its namespace goes: a FIN still in flight when
    the veth is deleted never arrives, and the session sshd would wait forever."""
    import psutil

    if board.process is None:
        return
    sessions = psutil.Process(board.process.pid).children(recursive=True)
    _, alive = psutil.wait_procs(sessions, timeout=3)
    for process in alive:
        process.terminate()
    psutil.wait_procs(alive, timeout=3)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def test_boards_in_network_namespaces_on_port_22(sshd_farm, home: Path, tmp_path: Path, cli) -> None:
    """Like a real rack: each board its own 10.200.x.y address, sshd on port 22, no route out."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 100000}"
    probe = f"llt{tag}p"
    if _ip("netns", "add", probe).returncode != 0:
        pytest.skip("`ip netns add` is not permitted here")
    _ip("netns", "del", probe)
    used = _ip("-4", "addr").stdout
    subnet = next(f"10.200.{n}" for n in range(50 + os.getpid() % 150, 256) if f"10.200.{n}." not in used)
    bridge = f"llb{tag}"
    namespaces: list[str] = []
    boards = []
    try:
        assert _ip("link", "add", bridge, "type", "bridge").returncode == 0
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, sample in enumerate(("pcie-host-ok", "soc-board-ok", "soc-board-downclocked"), 1):
            ns, veth, address = f"llt{tag}b{index}", f"llv{tag}b{index}", f"{subnet}.{10 + index}"
            assert _ip("netns", "add", ns).returncode == 0
            namespaces.append(ns)
            assert _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns).returncode == 0
            _ip("link", "set", veth, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # add() would start sshd in this namespace, where the address does not exist
            sshd_farm.start = lambda board, prefix=None: None
            board = sshd_farm.add(f"rack{index}", host=address, port=22)
            del sshd_farm.start
            sshd_farm.start(board, prefix=["ip", "netns", "exec", ns])
            boards.append((board, sample))
        (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
        assert all(b.known_hosts_line.startswith(f"{subnet}.") for b, _ in boards)  # port 22: no brackets
        inventory = tmp_path / "rack.yml"
        inventory.write_text("all:\n  children:\n    rack:\n      hosts:\n" + "".join(
            f"        {b.name}:\n          ansible_host: {b.host}\n          root: {SAMPLES / s}\n"
            f"          ansible_ssh_private_key_file: {sshd_farm.client_key}\n          ansible_user: {b.user}\n"
            for b, s in boards))
        code, out, err = cli("doctor", "--inventory", str(inventory), "--json", "--connect-timeout", "5")
        document = json.loads(out)
        assert [h["status"] for h in document["hosts"]] == ["checked"] * 3, err
        assert [(h["hostname"], h["port"]) for h in document["hosts"]] == [(b.host, 22) for b, _ in boards]
        assert code == 1  # the downclocked board warns; the other two are ok
    finally:
        for board, _ in boards:
            end_sessions(board)
            sshd_farm.stop(board)
        for ns in namespaces:
            _ip("netns", "del", ns)
        _ip("link", "del", bridge)
