"""The on-board verify: openssl dgst where the board has it, sha256sum otherwise, and a file changed
on the board between sending and verifying is caught by either, named, and never goes live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmtpu.provision.bundle import load_manifest
from llmtpu.provision.push import BoardPush, release_prefix
from tests.push.helpers import DEST, board_of, board_without_openssl, live, make_bundle

BIG = "models/qwen/qwen.bmodel"


class CorruptBeforeVerify:
    """Progress hook that flips a byte of a staged file once the verify phase begins."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def begin(self, board: str, total: int) -> None:
        pass

    def advance(self, board: str, nbytes: int) -> None:
        pass

    def phase(self, board: str, text: str) -> None:
        if text == "verifying on board":
            with open(self.staging / BIG, "r+b") as handle:
                byte = handle.read(1)
                handle.seek(0)
                handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("tool", ["openssl", "sha256sum"])
def test_verify_uses_the_fastest_tool_and_catches_a_changed_file(sshd_farm, tmp_path: Path, tool: str) -> None:
    sshd_board = sshd_farm.add(tool) if tool == "openssl" else board_without_openssl(sshd_farm, tool)
    board = board_of(sshd_farm, sshd_board)
    bundle = make_bundle(tmp_path, big=1 << 20)
    manifest = load_manifest(bundle)
    staging = Path(str(sshd_board.root)) / DEST.lstrip("/") / "releases" / f".staging-{release_prefix(manifest)}"
    bad = BoardPush(board, bundle, manifest, DEST, CorruptBeforeVerify(staging)).run()
    assert bad.status == "failed" and f"1 file(s) differ on the board after sending ({BIG})" in bad.message
    assert not os.path.lexists(live(sshd_board))
    good = BoardPush(board, bundle, manifest, DEST).run()
    assert good.status == "deployed" and good.verify_tool == tool, good.message
    assert good.files_sent == 1  # only the changed file travelled again
