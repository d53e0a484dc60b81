"""`doctor --fix` and `play` map the debs operation's interrupt to 130 with its way back, and its
refused input to 64, like `llmtpu debs apply` does (one exit-code table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.provision import debs

WAY_BACK = "interrupted after dpkg -i sophon-driver; `llmtpu undo --root /x` goes back"


@pytest.mark.parametrize(("error", "code", "line"), [
    (debs.ApplyInterrupted(WAY_BACK), 130, f"llmtpu: {WAY_BACK}"),
    (debs.RefusedInput("--root /x: the debs' maintainer scripts cannot run inside it"), 64,
     "llmtpu: error: --root /x: the debs' maintainer scripts cannot run inside it"),
])
def test_doctor_fix(error: BaseException, code: int, line: str, sysroot, monkeypatch, capsys) -> None:
    def raising(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr("llmtpu.provision.fixes.doctor_fix", raising)
    root = sysroot("pcie-host-old-driver")
    assert main(["doctor", "--root", str(root), "--fix", "--yes"]) == code
    err = capsys.readouterr().err
    assert line in err.splitlines() and "Traceback" not in err


@pytest.mark.parametrize(("error", "code", "line"), [
    (debs.ApplyInterrupted(WAY_BACK), 130, f"llmtpu: {WAY_BACK}"),
    (debs.RefusedInput("--debs /d: sophon-driver_0.5.1_arm64.deb is for arm64, the machine is amd64"), 64,
     "llmtpu: error: --debs /d: sophon-driver_0.5.1_arm64.deb is for arm64, the machine is amd64"),
])
def test_play(error: BaseException, code: int, line: str, sysroot, tmp_path: Path, monkeypatch, capsys) -> None:
    def raising(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr("llmtpu.play_command.play_on", raising)
    root = sysroot("pcie-host-old-driver")
    assert main(["play", "fresh-pcie-host", "--root", str(root), "--state-dir", str(tmp_path / "s"), "--yes"]) == code
    err = capsys.readouterr().err
    assert line in err.splitlines() and "Traceback" not in err
