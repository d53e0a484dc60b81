"""Push to real sshd boards: deploy, no-op, resume after a cut, repair, refusals, locks, disk full."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from llmtpu.provision.bundle import PAYLOAD, load_manifest
from llmtpu.provision.push import BoardPush, push_fleet, rollback_board
from tests.conftest import require
from tests.push.helpers import DEST, board_of, live, make_bundle

BIG = "models/qwen/qwen.bmodel"


def test_push_to_eight_boards_then_unchanged_then_rollback(sshd_farm, tmp_path: Path) -> None:
    boards = [sshd_farm.add(f"b{i}") for i in range(8)]
    targets = [board_of(sshd_farm, b) for b in boards]
    bundle = make_bundle(tmp_path, big=1 << 20)
    manifest = load_manifest(bundle)
    results = push_fleet(bundle, targets, DEST, parallel=4)
    assert [r.status for r in results] == ["deployed"] * 8, [r.message for r in results]
    for board in boards:
        for entry in manifest.files:
            assert (live(board) / entry.path).read_bytes() == (bundle / PAYLOAD / entry.path).read_bytes()
        assert os.readlink(live(board) / "deploy/lib/libchat.so.1") == "libchat.so"
        assert os.stat(live(board) / "deploy/run.sh").st_mode & 0o777 == 0o755
    again = push_fleet(bundle, targets, DEST, parallel=8)
    assert [(r.status, r.bytes_sent) for r in again] == [("unchanged", 0)] * 8

    first_release = os.readlink(live(boards[0]))
    bundle2 = make_bundle(tmp_path, "bundle2", big=1 << 20, seed=2)
    (r2,) = push_fleet(bundle2, targets[:1], DEST)
    assert r2.status == "deployed" and r2.previous == first_release
    assert r2.files_linked == 1  # deploy/run.sh is the same in both: hard-linked, not sent
    back = rollback_board(targets[0], DEST)
    assert back.status == "rolled-back" and os.readlink(live(boards[0])) == first_release


def kill_sessions(board) -> None:
    """Cut the board's live SSH connections the hard way: SIGKILL every sshd session process."""
    for child in psutil.Process(board.process.pid).children(recursive=True):
        child.kill()


class CutAfter:
    """Progress hook that kills the board's sessions once ``limit`` bytes went out."""

    def __init__(self, board, limit: int) -> None:
        self.board, self.limit, self.sent, self.cut = board, limit, 0, False

    def begin(self, board: str, total: int) -> None:
        pass

    def phase(self, board: str, text: str) -> None:
        pass

    def advance(self, board: str, nbytes: int) -> None:
        self.sent += nbytes
        if not self.cut and self.sent >= self.limit:
            self.cut = True
            kill_sessions(self.board)


def test_cut_mid_file_resumes_with_only_the_missing_bytes(sshd_farm, tmp_path: Path) -> None:
    sshd_board = sshd_farm.add("cut")
    board = board_of(sshd_farm, sshd_board)
    bundle = make_bundle(tmp_path, big=8 << 20)
    manifest = load_manifest(bundle)
    cut = CutAfter(sshd_board, 5 << 20)
    first = BoardPush(board, bundle, manifest, DEST, cut).run()
    assert cut.cut and first.status == "failed" and first.message
    assert not live(sshd_board).exists()
    staging = next((Path(str(sshd_board.root)) / DEST.lstrip("/") / "releases").glob(".staging-*"))
    partial = (staging / BIG).stat().st_size
    assert 0 < partial < 8 << 20
    present = sum((staging / f.path).stat().st_size for f in manifest.files if (staging / f.path).exists())
    missing = manifest.total_bytes - present

    second = BoardPush(board, bundle, manifest, DEST).run()
    assert second.status == "deployed", second.message
    assert second.files_resumed == 1
    assert second.bytes_sent <= missing * 1.05
    assert (live(sshd_board) / BIG).read_bytes() == (bundle / PAYLOAD / BIG).read_bytes()


def test_corrupt_file_on_board_is_detected_and_resent(sshd_farm, tmp_path: Path) -> None:
    sshd_board = sshd_farm.add("rot")
    board = board_of(sshd_farm, sshd_board)
    bundle = make_bundle(tmp_path)
    manifest = load_manifest(bundle)
    assert BoardPush(board, bundle, manifest, DEST).run().status == "deployed"
    on_board = live(sshd_board) / BIG
    st = on_board.stat()
    with open(on_board, "r+b") as handle:  # bit rot: same size, same mtime
        handle.seek(4096)
        handle.write(b"\0" * 16)
    os.utime(on_board, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert BoardPush(board, bundle, manifest, DEST).run().status == "unchanged"  # the quick check, like rsync
    repaired = BoardPush(board, bundle, manifest, DEST, checksum=True).run()
    assert repaired.status == "deployed" and repaired.files_sent == 1 and repaired.bytes_sent == 2 << 20
    assert (live(sshd_board) / BIG).read_bytes() == (bundle / PAYLOAD / BIG).read_bytes()
    # A later write that moves the mtime is caught without --checksum.
    with open(live(sshd_board) / "deploy/run.sh", "r+b") as handle:
        handle.write(b"#!")
    os.utime(live(sshd_board) / "deploy/run.sh", (st.st_atime + 100, st.st_mtime + 100))
    fixed = BoardPush(board, bundle, manifest, DEST).run()
    assert fixed.status in ("deployed", "unchanged") and fixed.message == ""


def test_tampered_bundle_is_refused_before_anything_is_sent(sshd_farm, tmp_path: Path) -> None:
    from llmtpu.provision.bundle import BundleError

    sshd_board = sshd_farm.add("tamper")
    bundle = make_bundle(tmp_path)
    with open(bundle / PAYLOAD / BIG, "r+b") as handle:
        handle.write(b"evil")
    with pytest.raises(BundleError, match="sha256 differs"):
        push_fleet(bundle, [board_of(sshd_farm, sshd_board)], DEST)
    (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text().replace('"soc"', '"pcie"'))
    with pytest.raises(BundleError, match="digest mismatch"):
        push_fleet(bundle, [board_of(sshd_farm, sshd_board)], DEST)
    assert not (Path(str(sshd_board.root)) / "data").exists()


class Hold:
    """Progress hook that parks the first push mid-transfer until released."""

    def __init__(self) -> None:
        self.reached, self.release = threading.Event(), threading.Event()

    def begin(self, board: str, total: int) -> None:
        pass

    def phase(self, board: str, text: str) -> None:
        pass

    def advance(self, board: str, nbytes: int) -> None:
        self.reached.set()
        self.release.wait(30)


def test_second_concurrent_push_is_refused(sshd_farm, tmp_path: Path) -> None:
    require(shutil.which("flock") is not None, "flock (util-linux) is not installed")
    sshd_board = sshd_farm.add("lock")
    board = board_of(sshd_farm, sshd_board)
    bundle = make_bundle(tmp_path)
    manifest = load_manifest(bundle)
    hold = Hold()
    first: list = []
    worker = threading.Thread(target=lambda: first.append(BoardPush(board, bundle, manifest, DEST, hold).run()))
    worker.start()
    assert hold.reached.wait(30)
    second = BoardPush(board, bundle, manifest, DEST).run()
    hold.release.set()
    worker.join(60)
    assert second.status == "failed" and "another push holds" in second.message
    assert first[0].status == "deployed", first[0].message


def test_disk_full_is_a_clear_error_and_keeps_the_live_release(sshd_farm, tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-m", "--propagation", "private", "true"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no private mount namespaces here (needs root and unshare)")
    sshd_board = sshd_farm.add("full")
    mount = Path(str(sshd_board.root)) / "data"
    mount.mkdir()
    sshd_farm.stop(sshd_board)
    script = 'mount -t tmpfs -o size=3m llmtpu-test "$0" && exec "$@"'
    sshd_farm.start(sshd_board, prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(mount)])
    board = board_of(sshd_farm, sshd_board)
    small = make_bundle(tmp_path, "small", big=1 << 20)
    first = BoardPush(board, small, load_manifest(small), DEST).run()
    assert first.status == "deployed", first.message
    before = sshd_farm.ssh_argv(sshd_board, "readlink", f"{sshd_board.root}{DEST}/current")
    release = subprocess.run(before, capture_output=True, text=True, check=True).stdout.strip()
    large = make_bundle(tmp_path, "large", big=4 << 20, seed=3)
    result = BoardPush(board, large, load_manifest(large), DEST).run()
    assert result.status == "failed" and "disk full" in result.message and result.bytes_sent == 0
    after = subprocess.run(before, capture_output=True, text=True, check=True).stdout.strip()
    assert after == release
    check = sshd_farm.ssh_argv(sshd_board, "sha256sum", f"{sshd_board.root}{DEST}/current/{BIG}")
    digest = subprocess.run(check, capture_output=True, text=True, check=True).stdout.split()[0]
    assert digest == next(f.sha256 for f in load_manifest(small).files if f.path == BIG)
