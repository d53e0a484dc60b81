"""Fixtures for the fleet tests: SSH options bound to a farm, a clean HOME, the CLI with `hosts`."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtpu.hostkeys import HostKeyStore
from llmtpu.inventory import HostSpec
from llmtpu.ssh import SSHOptions
from tests.sshd import Board, SshdFarm

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def comparable(report_json: dict) -> dict:
    """A report with the free-space numbers blanked: the disk fills and empties between two runs."""
    for check in report_json["checks"]:
        if check["id"] == "disk.models":
            check["summary"] = check["evidence"] = None
    return report_json


def options_for(farm: SshdFarm, own_file: Path, **overrides: object) -> SSHOptions:
    """Strict options that know the farm's keys: its known_hosts, its client key, no agent."""
    values: dict[str, object] = {
        "store": HostKeyStore([farm.known_hosts], own_file), "allow_agent": False, "look_for_keys": False,
        "identity_files": (str(farm.client_key),), "connect_timeout": 5.0, "command_timeout": 20.0,
    }
    values.update(overrides)
    return SSHOptions(**values)  # type: ignore[arg-type]


def spec_for(board: Board, root: Path | str = "/", name: str | None = None) -> HostSpec:
    return HostSpec(name=name or board.name, hostname=board.host, port=board.port, user=board.user, root=str(root))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME (no ~/.ssh keys, no agent) so the CLI only uses what a test gives it."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("LLMTPU_SSH_PASSWORD", raising=False)
    monkeypatch.delenv("LLMTPU_SSH_PASSPHRASE", raising=False)
    return home


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `llmtpu ...` in-process: returns (exit code, stdout, stderr)."""
    import llmtpu.cli as cli_module

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_module.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def rekey(farm: SshdFarm, board: Board) -> None:
    """The board gets a new host key (re-flashed, or an impostor) and is listening again."""
    farm.new_host_key(board)
