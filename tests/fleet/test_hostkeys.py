"""Host keys against real sshd: unknown refused with its fingerprint, accept-new, changed key
refused loudly, hashed and revoked lines, key-type preference, and fabric never auto-adding."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from llmtpu.hostkeys import HostKeyStore, fingerprint, host_key_name, names_match
from llmtpu.inventory import HostSpec
from llmtpu.ssh import SSHError, SSHTarget
from tests.fleet.conftest import options_for, rekey, spec_for


def ssh_keygen_fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_unknown_host_is_refused_with_its_fingerprint_and_the_trust_command(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("stranger", trusted=False)
    own = tmp_path / "llmtpu_known_hosts"
    target = SSHTarget(spec_for(board, name="stranger"), options_for(sshd_farm, own))
    with pytest.raises(SSHError) as caught:
        target.connect()
    assert caught.value.kind == "host-key-unknown"
    message = str(caught.value)
    assert ssh_keygen_fingerprint(board.host_key.with_suffix(".pub")) in message
    assert f"llmtpu hosts trust 127.0.0.1:{board.port}" in message and "--accept-new" in message
    assert not own.exists()  # nothing recorded


def test_accept_new_records_the_key_and_the_next_run_knows_it(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("fresh", trusted=False)
    own = tmp_path / "cfg" / "known_hosts"
    with SSHTarget(spec_for(board), options_for(sshd_farm, own, accept_new=True)) as target:
        assert target.host_key_outcome == "added"
        assert target.run(["true"]).ok
    line = own.read_text()
    assert line.startswith(f"[127.0.0.1]:{board.port} ssh-ed25519 ")
    assert own.stat().st_mode & 0o777 == 0o600
    with SSHTarget(spec_for(board), options_for(sshd_farm, own)) as target:  # no accept-new now
        assert target.host_key_outcome == "known"
    # OpenSSH agrees with what was recorded
    argv = sshd_farm.ssh_argv(board, "true")
    argv[argv.index(f"UserKnownHostsFile={sshd_farm.known_hosts}")] = f"UserKnownHostsFile={own}"
    out = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr


def test_changed_key_is_refused_even_with_accept_new(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("reflashed")
    old = ssh_keygen_fingerprint(board.host_key.with_suffix(".pub"))
    rekey(sshd_farm, board)
    new = ssh_keygen_fingerprint(board.host_key.with_suffix(".pub"))
    own = tmp_path / "known_hosts"
    for accept_new in (False, True):
        with pytest.raises(SSHError) as caught:
            SSHTarget(spec_for(board), options_for(sshd_farm, own, accept_new=accept_new)).connect()
        assert caught.value.kind == "host-key-changed"
        message = str(caught.value)
        assert "HOST KEY CHANGED" in message and old in message and new in message
        assert f"ssh-keygen -R '[127.0.0.1]:{board.port}'" in message
    assert not own.exists()


def test_hashed_known_hosts_line_is_matched(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("hashed", trusted=False)
    hashed = tmp_path / "known_hosts"
    hashed.write_text(board.known_hosts_line)
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert hashed.read_text().startswith("|1|")
    options = options_for(sshd_farm, tmp_path / "own")
    options.store = HostKeyStore([hashed], tmp_path / "own")
    with SSHTarget(spec_for(board), options) as target:
        assert target.host_key_outcome == "known"


def test_revoked_key_is_refused(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("revoked")
    revoked = tmp_path / "revoked"
    revoked.write_text("@revoked " + board.known_hosts_line)
    options = options_for(sshd_farm, tmp_path / "own", accept_new=True)
    options.store = HostKeyStore([sshd_farm.known_hosts, revoked], tmp_path / "own")
    with pytest.raises(SSHError) as caught:
        SSHTarget(spec_for(board), options).connect()
    assert caught.value.kind == "host-key-revoked"


def test_a_host_known_by_its_rsa_key_is_asked_for_that_key(sshd_farm, tmp_path: Path) -> None:
    """Like OpenSSH: a board known only by its RSA key must not look changed for showing ed25519."""
    folder = sshd_farm.workdir / "rsa"
    folder.mkdir()
    rsa = folder / "host_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    board = sshd_farm.add("rsa", trusted=False, extra_config=f"HostKey {rsa}\n")
    known = tmp_path / "known_hosts"
    blob = rsa.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{board.port} {blob[0]} {blob[1]}\n")
    options = options_for(sshd_farm, tmp_path / "own")
    options.store = HostKeyStore([known], tmp_path / "own")
    with SSHTarget(spec_for(board), options) as target:
        assert target.host_key_outcome == "known"


def test_plain_fabric_would_auto_add_but_ours_cannot(sshd_farm, tmp_path: Path) -> None:
    """fabric.Connection installs AutoAddPolicy; llmtpu's connections must never accept that way."""
    from fabric import Connection

    board = sshd_farm.add("mitm", trusted=False)
    # The danger, shown: fabric as shipped logs in to a host whose key nobody checked.
    plain = Connection("127.0.0.1", port=board.port, user=board.user, connect_kwargs={
        "key_filename": str(sshd_farm.client_key), "look_for_keys": False, "allow_agent": False})
    try:
        assert plain.run("true", hide=True, warn=True, in_stream=False).ok
        assert isinstance(plain.client._policy, paramiko.AutoAddPolicy)
    finally:
        plain.close()
    # Ours, through the same fabric class: refused, and nothing remembered anywhere.
    before = sshd_farm.known_hosts.read_text()
    target = SSHTarget(spec_for(board), options_for(sshd_farm, tmp_path / "own"))
    with pytest.raises(SSHError, match="unknown host key"):
        target.connect()
    assert sshd_farm.known_hosts.read_text() == before and not (tmp_path / "own").exists()


def test_a_jump_host_is_checked_as_strictly_as_the_target(sshd_farm, tmp_path: Path) -> None:
    """fabric builds ProxyJump gateways with AutoAddPolicy; ours go through the same strict store."""
    jump = sshd_farm.add("jump", trusted=False)
    inner = sshd_farm.add("inner")
    hop = HostSpec(name="jump", hostname=jump.host, port=jump.port, user=jump.user)
    spec = HostSpec(name="inner", hostname=inner.host, port=inner.port, user=inner.user, jump=(hop,),
                    root=str(Path(__file__).parent.parent / "samples" / "soc-board-ok"))
    with pytest.raises(SSHError) as caught:
        SSHTarget(spec, options_for(sshd_farm, tmp_path / "own")).connect()
    assert caught.value.kind == "host-key-unknown" and f"[127.0.0.1]:{jump.port}" in str(caught.value)
    with sshd_farm.known_hosts.open("a") as handle:
        handle.write(jump.known_hosts_line)
    with SSHTarget(spec, options_for(sshd_farm, tmp_path / "own")) as target:
        assert target.read_text("/proc/sys/kernel/version").startswith("#1 SMP Thu Aug 15")


def test_pattern_matching_follows_openssh() -> None:
    assert names_match("a,b,[127.0.0.1]:2222", "[127.0.0.1]:2222")
    assert names_match("*.rack1", "b3.rack1") and not names_match("*.rack1,!b3.rack1", "b3.rack1")
    assert names_match("board-??", "board-07") and not names_match("board-??", "board-107")
    assert host_key_name("h", 22) == "h" and host_key_name("h", 2200) == "[h]:2200"
    assert fingerprint(b"x").startswith("SHA256:") and not fingerprint(b"x").endswith("=")
