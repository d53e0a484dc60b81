"""The bundle, push and rollback commands end to end through argparse, as the lead will register them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.clikit import EXIT_USAGE
from tests.push.helpers import live, make_tree


def cli(argv: list[str]) -> int:
    return main(argv)


def test_bundle_push_rollback_commands(sshd_farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "LLM-TPU", big=1 << 20)
    out = tmp_path / "bundle"
    assert cli(["bundle", "create", str(out), "--from", str(tree), "--arch", "soc", "--json"]) == 0
    digest = json.loads(capsys.readouterr().out)["digest"]
    assert cli(["bundle", "verify", str(out)]) == 0
    board = sshd_farm.add("cli")
    connection = ["--hosts", f"127.0.0.1:{board.port}", "--identity", str(sshd_farm.client_key),
                  "--known-hosts", str(sshd_farm.known_hosts), "--ssh-config", "/dev/null",
                  "--board-root", str(board.root), "--json"]
    capsys.readouterr()
    assert cli(["push", str(out), *connection]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "llmtpu.push/1" and doc["digest"] == digest and doc["boards"][0]["status"] == "deployed"
    assert live(board).is_symlink()
    assert cli(["rollback", *connection]) == 2  # nothing to go back to yet
    assert "no previous deployment" in json.loads(capsys.readouterr().out)["boards"][0]["message"]


def test_unknown_host_key_fails_that_board_only(sshd_farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "LLM-TPU", big=1000)
    out = tmp_path / "bundle"
    assert cli(["bundle", "create", str(out), "--from", str(tree), "--json"]) == 0
    good, stranger = sshd_farm.add("good"), sshd_farm.add("stranger", trusted=False)
    capsys.readouterr()
    code = cli(["push", str(out), "--hosts", f"127.0.0.1:{good.port},127.0.0.1:{stranger.port}",
                "--identity", str(sshd_farm.client_key), "--known-hosts", str(sshd_farm.known_hosts),
                "--ssh-config", "/dev/null", "--board-root", str(good.root), "--json"])
    boards = json.loads(capsys.readouterr().out)["boards"]
    assert code == 2
    assert boards[0]["status"] == "deployed"
    assert boards[1]["status"] == "failed" and "host key not trusted" in boards[1]["message"]


def test_push_to_the_boards_of_an_inventory(sshd_farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fleet's inventory (ports, users, key files, per-host root=) drives push too."""
    tree = make_tree(tmp_path / "LLM-TPU", big=1 << 16)
    out = tmp_path / "bundle"
    assert cli(["bundle", "create", str(out), "--from", str(tree), "--json"]) == 0
    boards = [sshd_farm.add(f"inv{i}") for i in range(3)]
    inventory = tmp_path / "boards.ini"
    inventory.write_text("[soc]\n" + "".join(
        f"{b.name} ansible_host=127.0.0.1 ansible_port={b.port} ansible_user={b.user} root={b.root} "
        f"ansible_ssh_private_key_file={sshd_farm.client_key}\n" for b in boards))
    capsys.readouterr()
    code = cli(["push", str(out), "--inventory", str(inventory), "--limit", "soc:!inv2",
                "--known-hosts", str(sshd_farm.known_hosts), "--ssh-config", "/dev/null", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [b["status"] for b in doc["boards"]] == ["deployed", "deployed"]
    assert live(boards[0]).is_symlink() and live(boards[1]).is_symlink() and not live(boards[2]).exists()


def test_usage_errors(tmp_path: Path) -> None:
    assert cli(["push", str(tmp_path)]) == EXIT_USAGE  # no boards named
    assert cli(["push", str(tmp_path), "--hosts", "a", "--limit", "x"]) == EXIT_USAGE
    assert cli(["bundle", "create", str(tmp_path / "o"), "--from", str(tmp_path / "missing")]) == EXIT_USAGE
    assert not (tmp_path / "o").exists()
    assert cli(["push", str(tmp_path), "--hosts", "a:notaport"]) == EXIT_USAGE
    assert cli(["push", str(tmp_path), "--hosts", "127.0.0.1"]) == EXIT_USAGE  # not a bundle
