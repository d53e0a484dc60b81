"""push and rollback against hostile or unlucky boards (issue 11 items 1, 2, 6, 7, 8, 9), on real sshd boards.

A board's DEST may hold links llmtpu never made; each must be refused with one line naming it and
nothing behind it touched. A board that takes the login but never runs a command must fail alone
after its deadline while the others finish and are reported at once. Signals must stop every ssh
process and remove the temp folders; stale staging folders go; a disk that fills says how much.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from llmtpu.provision.bundle import load_manifest
from llmtpu.provision.push import (
    BoardPush,
    Cancel,
    push_fleet,
    release_prefix,
    rollback_board,
    rollback_fleet,
)
from llmtpu.provision.push_command import finish
from tests.push.helpers import DEST, board_of, live, make_bundle
from tests.push.test_push import CutAfter, kill_sessions

HANG = "ForceCommand exec sleep 600\n"


def dest_of(sshd_board) -> Path:
    return Path(str(sshd_board.root)) / DEST.lstrip("/")


def precious(sshd_board) -> Path:
    """A folder of the board that a push must never touch, with one file in it."""
    folder = Path(str(sshd_board.root)) / "etc"
    folder.mkdir(exist_ok=True)
    (folder / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return folder


def push(sshd_farm, sshd_board, bundle: Path, **options):
    return BoardPush(board_of(sshd_farm, sshd_board), bundle, load_manifest(bundle), DEST, **options).run()


def test_releases_linked_elsewhere_is_refused_and_nothing_behind_it_is_touched(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("releases")
    etc = precious(board)
    dest_of(board).mkdir(parents=True)
    os.symlink(etc, dest_of(board) / "releases")
    result = push(sshd_farm, board, make_bundle(tmp_path, big=1 << 16))
    assert result.status == "failed" and result.message.count("\n") == 0
    assert f"refused: {dest_of(board)}/releases is a link" in result.message
    assert sorted(os.listdir(etc)) == ["passwd"] and not (dest_of(board) / "current").exists()


def test_staging_folder_linked_elsewhere_is_refused(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("staging")
    etc = precious(board)
    bundle = make_bundle(tmp_path, big=1 << 16)
    staging = dest_of(board) / "releases" / f".staging-{release_prefix(load_manifest(bundle))}"
    staging.parent.mkdir(parents=True)
    os.symlink(etc, staging)
    result = push(sshd_farm, board, bundle)
    assert result.status == "failed" and f"refused: {staging} is a link" in result.message
    assert sorted(os.listdir(etc)) == ["passwd"]


def test_lock_linked_to_a_system_file_is_refused_and_never_created(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("lock")
    etc = precious(board)
    dest_of(board).mkdir(parents=True)
    os.symlink(etc / "nologin", dest_of(board) / ".lock")
    result = push(sshd_farm, board, make_bundle(tmp_path, big=1 << 16))
    assert result.status == "failed" and f"refused: {dest_of(board)}/.lock is a link" in result.message
    assert not (etc / "nologin").exists()


@pytest.mark.parametrize("link", ["current", "previous"])
def test_current_or_previous_pointing_outside_releases_is_refused(sshd_farm, tmp_path: Path, link: str) -> None:
    board = sshd_farm.add(f"{link}-out")
    etc = precious(board)
    (dest_of(board) / "releases").mkdir(parents=True)
    os.symlink(etc, dest_of(board) / link)
    result = push(sshd_farm, board, make_bundle(tmp_path, big=1 << 16))
    assert result.status == "failed"
    assert f"refused: {dest_of(board)}/{link} does not point to a release folder" in result.message
    assert sorted(os.listdir(etc)) == ["passwd"] and os.readlink(dest_of(board) / link) == str(etc)


@pytest.mark.parametrize("target", ["ETC", "releases/../../../etc", "releases/.staging-x", "releases/a\nb"])
def test_rollback_only_flips_to_a_release_folder(sshd_farm, tmp_path: Path, target: str) -> None:
    board = sshd_farm.add("rollback")
    etc = precious(board)
    assert push(sshd_farm, board, make_bundle(tmp_path, big=1 << 16)).status == "deployed"
    current = os.readlink(live(board))
    if target == "releases/.staging-x":
        (dest_of(board) / target).mkdir()
    os.symlink(str(etc) if target == "ETC" else target, dest_of(board) / "previous")
    result = rollback_board(board_of(sshd_farm, board), DEST)
    assert result.status == "failed" and "previous does not point to a release folder" in result.message
    assert os.readlink(live(board)) == current and sorted(os.listdir(etc)) == ["passwd"]


def test_hung_board_times_out_alone_and_the_others_are_reported_first(sshd_farm, tmp_path: Path) -> None:
    good, hung = sshd_farm.add("good"), sshd_farm.add("hung", extra_config=HANG)
    bundle = make_bundle(tmp_path, big=1 << 16)
    started = time.monotonic()
    reported: list[tuple[str, str, float]] = []
    try:
        results = push_fleet(bundle, [board_of(sshd_farm, hung), board_of(sshd_farm, good)], DEST, parallel=2,
                             timeout=10, report=lambda r: reported.append((r.board, r.status,
                                                                          time.monotonic() - started)))
        back = rollback_fleet([board_of(sshd_farm, hung)], DEST, timeout=3)
    finally:
        kill_sessions(hung)
    assert results[1].status == "deployed", results[1].message
    assert results[0].status == "failed" and "timed out after 10 s while taking the push lock" in results[0].message
    assert reported[0][:2] == (f"127.0.0.1:{good.port}", "deployed") and reported[1][1] == "failed"
    assert reported[0][2] < reported[1][2] and results[0].seconds < 30
    assert back[0].status == "failed" and "timed out after 3 s" in back[0].message


def read_until(proc: subprocess.Popen[bytes], text: str, seconds: float) -> str:
    """stderr of proc until a line holding text appears (or the deadline passes)."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + seconds
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def ssh_processes_under(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(folder) in word for word in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_every_ssh_process_and_removes_the_temp_folders(sshd_farm, tmp_path: Path, sig: int) -> None:
    """A real signal to a real `llmtpu push`: the finished board stays deployed, the hung one is
    interrupted, exit 130, no ControlMaster and no llmtpu-ssh-* folder left behind."""
    good, hung = sshd_farm.add("good"), sshd_farm.add("hung", extra_config=HANG)
    bundle = make_bundle(tmp_path, big=1 << 16)
    inventory = tmp_path / "boards.ini"
    inventory.write_text("".join(f"{b.name} ansible_host=127.0.0.1 ansible_port={b.port} ansible_user={b.user} "
                                 f"root={b.root} ansible_ssh_private_key_file={sshd_farm.client_key}\n"
                                 for b in (good, hung)))
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "llmtpu", "push", str(bundle), "--inventory", str(inventory),
                             "--known-hosts", str(sshd_farm.known_hosts), "--ssh-config", "/dev/null",
                             "--timeout", "300", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(temp)})
    try:
        seen = read_until(proc, f"127.0.0.1:{good.port}: deployed", 60)
        assert f"127.0.0.1:{good.port}: deployed" in seen, seen
        assert list(temp.glob("llmtpu-ssh-*")) and ssh_processes_under(temp)  # the hung board's master is up
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_sessions(hung)
    boards = json.loads(out)["boards"]
    assert proc.returncode == 130, err
    assert [b["status"] for b in boards] == ["deployed", "interrupted"]
    assert b"interrupted" in err and b"Traceback" not in err
    assert list(temp.iterdir()) == [] and ssh_processes_under(temp) == []
    assert live(good).is_symlink()


def test_an_interrupt_after_every_board_finished_is_not_an_interruption(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("done")
    cancel = Cancel()
    results = push_fleet(make_bundle(tmp_path, big=1 << 16), [board_of(sshd_farm, board)], DEST, cancel=cancel,
                         report=lambda r: cancel.set())
    assert [r.status for r in results] == ["deployed"] and finish(results, True) == 0
    assert finish([replace(results[0], status="interrupted")], False) == 130


def test_stale_staging_of_a_cut_push_is_removed_by_the_next_deploy(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("stale")
    first = make_bundle(tmp_path, "first", big=8 << 20)
    cut = CutAfter(board, 5 << 20)
    assert push(sshd_farm, board, first, progress=cut).status == "failed" and cut.cut
    releases = dest_of(board) / "releases"
    assert [p.name for p in releases.iterdir()][0].startswith(".staging-")
    second = make_bundle(tmp_path, "second", big=1 << 16, seed=2)
    assert push(sshd_farm, board, second).status == "deployed"
    assert [p.name for p in releases.iterdir()] == [os.path.basename(os.readlink(live(board)))]


class FillDisk:
    """Progress hook that, once sending has begun, fills the board's disk from another process."""

    def __init__(self, sshd_farm, board, mount: Path) -> None:
        self.argv = sshd_farm.ssh_argv(board, f"cat /dev/zero > {mount}/filler")
        self.done = False

    def begin(self, board: str, total: int) -> None:
        pass

    def phase(self, board: str, text: str) -> None:
        pass

    def advance(self, board: str, nbytes: int) -> None:
        if not self.done:
            self.done = True
            self.out = subprocess.run(self.argv, capture_output=True, timeout=60)


def test_disk_full_mid_transfer_says_how_much_is_free_and_needed(sshd_farm, tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-m", "--propagation", "private", "true"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no private mount namespaces here (needs root and unshare)")
    board = sshd_farm.add("fills")
    mount = Path(str(board.root)) / "data"
    mount.mkdir()
    sshd_farm.stop(board)
    script = 'mount -t tmpfs -o size=16m llmtpu-test "$0" && exec "$@"'
    sshd_farm.start(board, prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(mount)])
    bundle = make_bundle(tmp_path, big=8 << 20)
    fill = FillDisk(sshd_farm, board, mount)
    result = push(sshd_farm, board, bundle, progress=fill)
    assert result.status == "failed", (result.message, fill.out)
    assert result.message.startswith(f"disk full on 127.0.0.1:{board.port}: ")
    assert " MiB free, 8.0 MiB needed under " in result.message, result.message
    assert "tar" not in result.message


@pytest.mark.parametrize("field", ["host", "user"])
def test_host_or_user_starting_with_a_dash_never_reaches_ssh(sshd_farm, tmp_path: Path, field: str) -> None:
    board = sshd_farm.add("dash")
    marker = tmp_path / "pwned"
    evil = f"-oProxyCommand=touch {marker}"
    target = replace(board_of(sshd_farm, board), **{field: evil})
    result = BoardPush(target, make_bundle(tmp_path, big=1000), load_manifest(tmp_path / "bundle"), DEST).run()
    assert result.status == "failed" and f"not a valid {field} name" in result.message
    inventory = tmp_path / "boards.ini"
    inventory.write_text(f"evil ansible_{field}={evil!r} ansible_port={board.port}\n".replace("'", '"'))
    code = subprocess.run([sys.executable, "-m", "llmtpu", "push", str(tmp_path / "bundle"), "--inventory",
                           str(inventory), "--known-hosts", str(sshd_farm.known_hosts), "--ssh-config", "/dev/null"],
                          capture_output=True, timeout=60).returncode
    assert code == 64 and not marker.exists()


def test_links_planted_inside_staging_or_the_live_release_are_never_followed(sshd_farm, tmp_path: Path) -> None:
    """Links inside llmtpu's own folders (a cut push's staging, the live release) are not ours either:
    staging is cleaned of them, and the live release is read without following them."""
    board = sshd_farm.add("planted")
    etc = precious(board)
    (etc / "run.sh").write_text("#!/bin/sh\necho run\n")  # same content as the bundle's deploy/run.sh
    first = make_bundle(tmp_path, "first", big=1 << 16)
    assert push(sshd_farm, board, first).status == "deployed"
    release = live(board).resolve()
    shutil.rmtree(release / "deploy")
    os.symlink(etc, release / "deploy")  # the live release now reaches /etc through deploy/
    second = make_bundle(tmp_path, "second", big=1 << 16, seed=2)
    staging = dest_of(board) / "releases" / f".staging-{release_prefix(load_manifest(second))}"
    (staging / "models").mkdir(parents=True)
    os.symlink(etc, staging / "deploy")
    os.symlink(etc / "passwd", staging / "models" / "qwen")
    result = push(sshd_farm, board, second)
    assert result.status == "deployed", result.message
    assert result.files_linked == 0  # nothing hard-linked through the planted deploy/ link
    assert sorted(os.listdir(etc)) == ["passwd", "run.sh"]
    assert (etc / "passwd").read_text().startswith("root:x") and os.stat(etc / "run.sh").st_nlink == 1
    assert (live(board) / "deploy" / "run.sh").read_text() == "#!/bin/sh\necho run\n"
    assert not (live(board) / "deploy").is_symlink()


def test_a_board_that_hangs_in_a_later_step_times_out_too(sshd_farm, tmp_path: Path) -> None:
    """The lock is taken, files are sent, then the verify never answers: that step's deadline fails it."""
    hang_verify = ('ForceCommand case "$SSH_ORIGINAL_COMMAND" in *"dgst -sha256"*) exec sleep 600 ;; '
                   '*) eval "$SSH_ORIGINAL_COMMAND" ;; esac\n')
    board = sshd_farm.add("hangs-late", extra_config=hang_verify)
    started = time.monotonic()
    try:
        result = push(sshd_farm, board, make_bundle(tmp_path, big=1 << 16), timeout=3)
    finally:
        kill_sessions(board)
    assert result.status == "failed" and "timed out after 3 s while verifying" in result.message, result.message
    assert time.monotonic() - started < 60 and not live(board).exists()
