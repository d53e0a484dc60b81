"""Shared fixtures: sysroot trees built from tests/samples, and the require-all switch.

CI sets LLMTPU_REQUIRE_ALL=1 so a test that would skip for a missing tool (sshd, mtools, the
cmodel) fails instead: a green CI run then means every test really ran.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent / "samples"


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing, unless CI demands that everything runs."""
    if condition:
        return
    if os.environ.get("LLMTPU_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def copy_sample(name: str, dest: Path) -> Path:
    """A writable copy of a sample sysroot (symlinks kept as symlinks)."""
    shutil.copytree(SAMPLES / name, dest, symlinks=True)
    return dest


@pytest.fixture
def sysroot(tmp_path: Path):
    """Factory: sysroot("pcie-host-ok") -> a fresh writable copy under tmp_path."""

    def make(name: str | None) -> Path:
        dest = tmp_path / (name or "empty")
        if name is None:
            dest.mkdir()
            return dest
        return copy_sample(name, dest)

    return make


@pytest.fixture
def sshd_farm(tmp_path: Path):
    """Real OpenSSH sshd boards on 127.0.0.1 (see tests/sshd.py); all stopped after the test."""
    from tests.sshd import SshdFarm, sshd_available

    require(sshd_available(), "OpenSSH sshd is not installed (apt-get install openssh-server)")
    farm = SshdFarm(tmp_path / "sshd")
    try:
        yield farm
    finally:
        farm.close()
