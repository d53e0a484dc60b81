"""`llmtpu undo` reverts a monitor install; host counts are singular for one host; `hosts --help`
shows plain text (no RST double backticks) and names every inventory format."""

from __future__ import annotations

from pathlib import Path

from llmtpu.cli import main
from llmtpu.provision.monitor import SERVICE_PATH, TIMER_PATH, MonitorInstall
from llmtpu.provision.operation import Journal
from llmtpu.target import LocalTarget
from tests.prometheus.test_metrics import settings


def test_llmtpu_undo_reverts_a_monitor_install(sysroot, capsys) -> None:
    root: Path = sysroot("soc-board-ok")
    target = LocalTarget(str(root))
    operation = MonitorInstall(settings())
    operation.apply(target, operation.plan(target), Journal(target))
    assert (root / SERVICE_PATH.lstrip("/")).exists()
    assert main(["undo", "--root", str(root), "--yes"]) == 0, capsys.readouterr()
    assert "undone" in capsys.readouterr().out
    assert not (root / SERVICE_PATH.lstrip("/")).exists() and not (root / TIMER_PATH.lstrip("/")).exists()


def test_one_host_is_said_in_the_singular(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["hosts", "list", "--hosts", "board1.example:22"]) == 0
    out = capsys.readouterr().out
    assert "1 host\n" in out or "1 host " in out
    assert "1 hosts" not in out


def test_hosts_help_has_no_rst_and_names_the_inventory_formats(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    for argv in (["hosts", "--help"], ["hosts", "list", "--help"], ["doctor", "--help"]):
        try:
            main(argv)
        except SystemExit:
            pass
        out = capsys.readouterr().out
        assert "``" not in out, argv
        if argv != ["hosts", "--help"]:
            assert "Ansible inventory (INI, YAML, `ansible-inventory --list` JSON; `-` reads stdin)" in out
