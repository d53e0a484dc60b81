"""tar, dpkg and dpkg-deb open llmtpu's state paths textually: a root whose var/lib/llmtpu (or a
folder in it) is a symbolic link is refused with one line and exit 64 before anything is written
where the link points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.provision.conftest import cli, fingerprint


@pytest.mark.parametrize("linked", ["var/lib/llmtpu", "var/lib/llmtpu/backups", "var/lib/llmtpu/debs"])
def test_a_linked_state_folder_is_refused_and_nothing_lands_outside(linked: str, debroot, release, tmp_path: Path,
                                                                     capsys) -> None:
    root = debroot("pcie-host-old-driver")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = root / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(outside), link)  # absolute text: out of the root for a tool that opens it textually
    before = fingerprint(root)
    code = cli(["debs", "apply", "--debs", str(release("0.5.1")), "--root", str(root), "--yes"])
    err = capsys.readouterr().err
    assert code == 64, err
    assert len(err.strip().splitlines()) == 1 and "symbolic link" in err and "Traceback" not in err
    assert list(outside.iterdir()) == []
    assert fingerprint(root) == before
