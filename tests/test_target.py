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


def test_run_missing_command_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(TargetError, match="command not found"):
        LocalTarget("/").run(["no-such-command-llmtpu"])


def test_run_of_a_file_that_may_not_be_executed_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(TargetError, match="tool: permission denied"):
        LocalTarget("/").run([str(script)])


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


# -- confinement under a sysroot (the fault catalogue is tests/faults/test_root_*.py) ----------


def test_a_relative_link_climbing_above_the_root_is_clamped_at_the_root(tmp_path: Path) -> None:
    """``/..`` is ``/`` on the machine the sysroot stands for, so that is where the link ends."""
    root = tmp_path / "root"
    (root / "etc/deep").mkdir(parents=True)
    (root / "secret").write_text("inside\n")
    (tmp_path / "secret").write_text("outside\n")
    (root / "etc/deep/up").symlink_to("../../../../../secret")
    target = LocalTarget(str(root))
    assert target.resolve("/etc/deep/up") == "/secret"
    assert target.read_text("/etc/deep/up") == "inside\n"


def test_links_in_folders_resolve_inside_the_root_for_every_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real/sub").mkdir(parents=True)
    (root / "real/sub/file").write_text("in root\n")
    (root / "real/sub/link").symlink_to("file")
    (tmp_path / "outside/sub").mkdir(parents=True)
    (tmp_path / "outside/sub/file").write_text("outside\n")
    (root / "etc").symlink_to("/real")  # absolute: a machine path
    os.makedirs(root / str(tmp_path / "outside").lstrip("/"))
    (root / "host").symlink_to(tmp_path / "outside")  # names this machine's folder: not followed out
    target = LocalTarget(str(root))
    assert target.read_text("/etc/sub/file") == "in root\n"
    assert target.listdir("/etc/sub") == ["file", "link"]
    assert target.lstat("/etc/sub/link").kind == "link" and target.readlink("/etc/sub/link") == "file"
    assert target.access("/etc/sub/file", want_write=False) is True
    assert target.disk_usage("/etc/sub").total > 0
    assert target.listdir("/host") == []  # the in-root copy of that path, empty
    assert target.lstat("/host/sub/file") is None
    with pytest.raises(FileNotFoundError):
        target.read_bytes("/host/sub/file")


def test_a_loop_is_refused_as_both_a_target_error_and_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/version").symlink_to("/proc/version")  # names itself inside the root
    target = LocalTarget(str(tmp_path))
    with pytest.raises(PathRefused, match="too many levels of symbolic links") as caught:
        target.read_bytes("/proc/version")
    assert isinstance(caught.value, TargetError) and isinstance(caught.value, OSError)
    assert str(caught.value) == f"{tmp_path}/proc/version: too many levels of symbolic links"


def test_a_flattened_link_is_followed_where_a_folder_is_needed(tmp_path: Path) -> None:
    (tmp_path / "opt/sophon/libsophon-0.5.1/lib").mkdir(parents=True)
    (tmp_path / "opt/sophon/libsophon-0.5.1/lib/x.conf").write_text("x\n")
    (tmp_path / "opt/sophon/libsophon-current").write_text("/opt/sophon/libsophon-0.5.1")
    target = LocalTarget(str(tmp_path))
    assert target.read_text("/opt/sophon/libsophon-current/lib/x.conf") == "x\n"
    assert target.listdir("/opt/sophon/libsophon-current") == ["lib"]


def test_makedirs_through_a_dangling_link_makes_its_target_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/systemd").symlink_to(tmp_path / "elsewhere")
    target = LocalTarget(str(root))
    target.write_atomic("/etc/systemd/system/a.service", b"[Unit]\n")
    assert not (tmp_path / "elsewhere").exists()
    assert (root / str(tmp_path / "elsewhere/system/a.service").lstrip("/")).read_bytes() == b"[Unit]\n"


def test_write_atomic_replaces_a_link_and_keeps_it_as_the_backup(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "victim").write_text("victim\n")
    (root / "etc/app.conf").symlink_to(tmp_path / "victim")
    target = LocalTarget(str(root))
    backup = target.write_atomic("/etc/app.conf", b"new\n")
    assert (tmp_path / "victim").read_text() == "victim\n"
    assert not (root / "etc/app.conf").is_symlink() and (root / "etc/app.conf").read_bytes() == b"new\n"
    assert backup is not None and target.readlink(backup) == str(tmp_path / "victim")


def test_write_atomic_backup_is_a_new_file_even_when_one_is_planted(tmp_path: Path, monkeypatch) -> None:
    """The backup name is fixed by the clock; a link planted there is replaced, not written through."""
    import time as time_module

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.conf").write_text("old\n")
    (tmp_path / "victim").write_text("victim\n")
    monkeypatch.setattr(time_module, "strftime", lambda fmt, t=None: "20260101T000000Z")
    planted = root / "var/lib/llmtpu/backups/20260101T000000Z/etc/app.conf"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path / "victim")
    target = LocalTarget(str(root))
    assert target.write_atomic("/etc/app.conf", b"new\n") == "/var/lib/llmtpu/backups/20260101T000000Z/etc/app.conf"
    assert (tmp_path / "victim").read_text() == "victim\n"
    assert not planted.is_symlink() and planted.read_text() == "old\n"


def test_remove_and_symlink_never_act_through_a_linked_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/keep").write_text("keep\n")
    (root / "wants").symlink_to(tmp_path / "outside")
    target = LocalTarget(str(root))
    target.remove("/wants/keep")
    with pytest.raises(FileNotFoundError):
        target.symlink("/x", "/wants/link")
    assert sorted(os.listdir(tmp_path / "outside")) == ["keep"]


def test_the_real_root_still_follows_the_machines_own_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real/file").write_text("here\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    target = LocalTarget("/")
    assert target.read_text(f"{tmp_path}/link/file") == "here\n"
    target.write_atomic(f"{tmp_path}/link/new", b"new\n", backup=False)
    assert (tmp_path / "real/new").read_bytes() == b"new\n"
    assert target.listdir(f"{tmp_path}/link") == ["file", "new"]


def test_a_folder_that_may_only_be_searched_is_walked_like_the_kernel_does(tmp_path: Path) -> None:
    """Folders on the way need search permission only (O_PATH), as in a plain open() of the path."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/conf").write_text("x\n")
    (tmp_path / "etc").chmod(0o111)
    try:
        target = LocalTarget(str(tmp_path))
        assert target.read_text("/etc/conf") == "x\n"
        assert target.lstat("/etc/conf").kind == "file"
        target.append("/etc/conf", b"y\n")
    finally:
        (tmp_path / "etc").chmod(0o755)
    assert (tmp_path / "etc/conf").read_text() == "x\ny\n"


def test_a_failed_walk_names_the_whole_path(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/elsewhere")
    with pytest.raises(FileNotFoundError) as caught:
        LocalTarget(str(tmp_path)).read_bytes("/etc/systemd/unit")
    assert caught.value.filename == f"{tmp_path}/etc/systemd/unit"
