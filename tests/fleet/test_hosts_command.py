"""`llmtpu hosts trust` shows the fingerprint and records it only when confirmed; `hosts list`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fleet.conftest import SAMPLES, rekey


def fingerprint_of(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_trust_flow_then_doctor_connects(sshd_farm, home: Path, cli) -> None:
    board = sshd_farm.add("newbox", trusted=False)
    host = f"{board.user}@127.0.0.1:{board.port}"
    expected = fingerprint_of(board.host_key.with_suffix(".pub"))
    own = home / ".config" / "llmtpu" / "known_hosts"

    code, out, err = cli("doctor", "--hosts", host, "--json")  # unknown: refused, with the way out
    assert code == 3
    error = json.loads(out)["hosts"][0]["error"]
    assert expected in error and f"llmtpu hosts trust 127.0.0.1:{board.port}" in error

    code, out, err = cli("hosts", "trust", host)  # not a terminal and no --yes: shown, not recorded
    assert code == 3 and expected in out and "not recorded" in err and not own.exists()

    code, out, err = cli("hosts", "trust", host, "--fingerprint", "SHA256:AAAAwrong")
    assert code == 3 and "not the expected" in err and not own.exists()

    code, out, err = cli("hosts", "trust", host, "--fingerprint", expected)
    assert code == 0 and "trusted; recorded in" in out
    assert own.read_text().startswith(f"[127.0.0.1]:{board.port} ssh-ed25519 ")

    code, out, _ = cli("hosts", "trust", host, "--yes")
    assert code == 0 and "already trusted" in out

    inventory = home / "inv.ini"
    inventory.write_text(f"newbox ansible_host=127.0.0.1 ansible_port={board.port} ansible_user={board.user} "
                         f"root={SAMPLES / 'soc-board-ok'} ansible_ssh_private_key_file={sshd_farm.client_key}\n")
    code, out, err = cli("doctor", "--inventory", str(inventory), "--json")
    assert json.loads(out)["hosts"][0]["status"] == "checked", err

    code, out, _ = cli("hosts", "list", "--inventory", str(inventory), "--json")
    row = json.loads(out)["hosts"][0]
    assert row["name"] == "newbox" and row["host_keys"] == [f"ssh-ed25519 {expected}"]
    code, out, _ = cli("hosts", "list", "--inventory", str(inventory))
    assert code == 0 and "newbox" in out and "ssh-ed25519" in out

    rekey(sshd_farm, board)  # a changed key is never replaced by `trust`
    code, out, err = cli("hosts", "trust", host, "--yes")
    assert code == 3 and "HOST KEY CHANGED" in err and "ssh-keygen -R" in err


def test_accept_new_on_the_command_line(sshd_farm, home: Path, cli) -> None:
    board = sshd_farm.add("auto", trusted=False)
    inventory_less = ["doctor", "--hosts", f"{board.user}@127.0.0.1:{board.port}", "--json"]
    code, out, _ = cli(*inventory_less, "--accept-new")
    host = json.loads(out)["hosts"][0]
    assert host["status"] == "auth-failed" and "no key to log in with" in host["error"]
    assert host["host_key"] == "added"
    for suffix in ("", ".pub"):  # the key where OpenSSH looks by default
        (home / ".ssh" / f"id_ed25519{suffix}").write_bytes(Path(f"{sshd_farm.client_key}{suffix}").read_bytes())
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    code, out, _ = cli(*inventory_less)  # the key was recorded before the login failed, as with OpenSSH
    host = json.loads(out)["hosts"][0]
    assert host["status"] == "checked" and host["host_key"] == "known", host["error"]


def test_unreachable_host_cannot_be_trusted(home: Path, cli) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = cli("hosts", "trust", f"127.0.0.1:{port}", "--yes", "--connect-timeout", "2")
    assert code == 3 and "cannot get the host key" in err


def test_trust_a_host_behind_a_jump_host(sshd_farm, home: Path, tmp_path: Path, cli) -> None:
    gateway, hidden = sshd_farm.add("gw"), sshd_farm.add("hidden", trusted=False)
    (home / ".ssh" / "known_hosts").write_text(gateway.known_hosts_line)
    config = tmp_path / "ssh_config"
    config.write_text(f"Host hidden\n  HostName 127.0.0.1\n  Port {hidden.port}\n  ProxyJump gw\n"
                      f"Host gw\n  HostName 127.0.0.1\n  Port {gateway.port}\n"
                      f"Host *\n  User {hidden.user}\n  IdentityFile {sshd_farm.client_key}\n")
    code, out, err = cli("doctor", "--hosts", "hidden", "--ssh-config", str(config), "--json")
    error = json.loads(out)["hosts"][0]["error"]
    assert code == 3 and "llmtpu hosts trust hidden (with this run" in error
    code, out, err = cli("hosts", "trust", "hidden", "--ssh-config", str(config), "--yes")
    assert code == 0, err
    assert fingerprint_of(hidden.host_key.with_suffix(".pub")) in out
    code, out, err = cli("doctor", "--hosts", "hidden", "--ssh-config", str(config), "--json")
    assert json.loads(out)["hosts"][0]["status"] == "checked"
