"""The local target: root prefix, in-root symlinks, sysroot conventions, atomic writes, commands."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from llmtpu.target import LocalTarget, PathRefused, TargetError, parse_dev_list


def test_paths_are_read_under_the_root(sysroot) -> None:
    root = sysroot("pcie-host-ok")
    target = LocalTarget(str(root))
    assert target.read_text("/proc/bmsophon/card_num").strip() == "1"
    assert target.host_path("/etc/x") == f"{root}/etc/x"
    with pytest.raises(FileNotFoundError):
        target.read_bytes("/etc/passwd")  # this machine's own file is not under the root


def test_absolute_symlinks_resolve_inside_the_root(sysroot) -> None:
    target = LocalTarget(str(sysroot("pcie-host-ok")))
    assert target.resolve("/opt/sophon/libsophon-current/lib") == "/opt/sophon/libsophon-0.5.1/lib"
    assert target.exists("/opt/sophon/libsophon-current/lib/libbmrt.so")


def test_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("/b")
    (tmp_path / "b").symlink_to("/a")
    target = LocalTarget(str(tmp_path))
    with pytest.raises(TargetError, match="too many levels"):
        target.resolve("/a/x")
    assert not target.exists("/a")


def test_flattened_symlink_stands_in_for_the_link(tmp_path: Path) -> None:
    """A store that drops symlinks leaves the target path as file content, no newline."""
    (tmp_path / "opt/sophon/libsophon-0.5.1/lib").mkdir(parents=True)
    (tmp_path / "opt/sophon/libsophon-current").write_text("/opt/sophon/libsophon-0.5.1")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/conf").write_text("/opt/sophon/libsophon-current/lib\n")  # a real file
    target = LocalTarget(str(tmp_path))
    assert target.lstat("/opt/sophon/libsophon-current").kind == "link"
    assert target.resolve("/opt/sophon/libsophon-current/lib") == "/opt/sophon/libsophon-0.5.1/lib"
    assert target.lstat("/etc/conf").kind == "file"


def test_real_root_never_treats_files_as_links(tmp_path: Path) -> None:
    target = LocalTarget("/")
    path = tmp_path / "looks-like-link"
    path.write_text("/etc")
    assert target.lstat(str(path)).kind == "file"


def test_dev_list_stands_for_dev(sysroot) -> None:
    target = LocalTarget(str(sysroot("soc-board-ok")))
    assert target.lstat("/dev/bm-tpu0").kind == "char"
    assert target.lstat("/dev/mmcblk0").kind == "block"
    assert target.lstat("/dev/bm-sophon0") is None
    assert "bm-tpu0" in target.listdir("/dev")
    assert target.access("/dev/bm-tpu0") is None  # the samples record no modes


def test_dev_list_parser_ignores_junk_and_reads_modes() -> None:
    entries = parse_dev_list("c /dev/a 0660\n\n# comment\nx /dev/b\nb /dev/c\nc relative\nc /dev/d zz\n")
    assert set(entries) == {"/dev/a", "/dev/c", "/dev/d"}
    assert entries["/dev/a"].mode == 0o660 and entries["/dev/d"].mode is None


def test_unbounded_file_reads_are_capped(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (3 << 20))
    target = LocalTarget(str(tmp_path))
    assert len(target.read_bytes("/big")) == 1 << 20
    assert len(target.read_bytes("/big", limit=10)) == 10


def test_fifo_is_refused_under_a_sysroot_and_does_not_hang_on_the_real_root(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PathRefused, match="is a fifo, not a regular file"):
        LocalTarget(str(tmp_path)).read_bytes("/fifo")
    assert LocalTarget("/").read_bytes(str(tmp_path / "fifo")) == b""


def test_write_atomic_keeps_a_backup(tmp_path: Path) -> None:
    target = LocalTarget(str(tmp_path))
    assert target.write_atomic("/etc/app.conf", b"one\n") is None
    backup = target.write_atomic("/etc/app.conf", b"two\n", mode=0o600)
    assert (tmp_path / "etc/app.conf").read_bytes() == b"two\n"
    assert oct((tmp_path / "etc/app.conf").stat().st_mode & 0o777) == "0o600"
    assert backup is not None and backup.startswith("/var/lib/llmtpu/backups/")
    assert target.read_bytes(backup) == b"one\n"
    assert [p.name for p in (tmp_path / "etc").iterdir()] == ["app.conf"]  # no temp file left


def test_write_atomic_failure_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = LocalTarget(str(tmp_path))
    target.write_atomic("/etc/app.conf", b"old\n", backup=False)

    def broken_replace(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        target.write_atomic("/etc/app.conf", b"new\n", backup=False)
    assert (tmp_path / "etc/app.conf").read_bytes() == b"old\n"
    assert [p.name for p in (tmp_path / "etc").iterdir()] == ["app.conf"]


def test_run_takes_an_argument_list() -> None:
    target = LocalTarget("/")
    result = target.run([sys.executable, "-c", "import sys; print(sys.argv[1])", "a b; rm -rf /"])
    assert result.ok and result.text() == "a b; rm -rf /\n"


def test_run_timeout_kills_the_process_group() -> None:
    target = LocalTarget("/")
    start = time.monotonic()
    result = target.run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 10


def test_run_missing_command_is_a_clear_error() -> None:
    with pytest.raises(TargetError, match="command not found"):
        LocalTarget("/").run(["no-such-command-llmtpu"])


def test_recorded_command_output_only_in_a_sysroot(sysroot) -> None:
    target = LocalTarget(str(sysroot("soc-board-ok")))
    assert "SophonSDK version: v23.09 LTS-SP3" in (target.recorded_output("bm_version") or "")
    assert LocalTarget("/").recorded_output("bm_version") is None


def test_append_remove_symlink_makedirs(tmp_path: Path) -> None:
    target = LocalTarget(str(tmp_path))
    (tmp_path / "clock").write_bytes(b"head\n")
    target.append("/clock", b"setr tpll_clock 750000000\n")
    assert (tmp_path / "clock").read_bytes() == b"head\nsetr tpll_clock 750000000\n"
    target.makedirs("/etc/a/b")
    target.makedirs("/etc/a/b")
    target.symlink("/x", "/etc/a/b/link")
    target.symlink("/y", "/etc/a/b/link")  # replaced, not an error
    assert target.readlink("/etc/a/b/link") == "/y"
    target.remove("/etc/a/b/link")
    target.remove("/etc/a/b/link")
    assert target.lstat("/etc/a/b/link") is None
    with pytest.raises(FileNotFoundError):
        target.append("/missing", b"x")
