"""Reads under --root stay inside the root (issue 11 items 11 and 17, "reads outside the root").

Each test builds a hostile sysroot from a shared sample: links that lead out of the root to this
machine (its /proc, a fake private key in a folder beside the root), absolute and climbing
relative, loops, pipes. The real CLI runs on it (``llmtpu.cli.main``); an inotify watch on the
outside folder (tests/faults/test_root_watch.py) proves nothing there was opened, and the key's
text appears in no output and no archive. Before the fix, the key went into report's
doctor.json and the doctor judged this machine's kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.target import LocalTarget, PathRefused
from tests.conftest import copy_sample, require
from tests.faults.test_root_watch import OutsideWatch

MARKER = f"llmtpu-canary-{uuid.uuid4().hex}"
KEY_TEXT = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{MARKER}\n-----END OPENSSH PRIVATE KEY-----\n"
#: A kernel version no sample has: if it shows up, the doctor read the outside.
OUTSIDE_KERNEL = f"#9 SMP Mon Jan 5 10:00:00 UTC 2099 {MARKER}\n"
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


class Hostile:
    """A sample sysroot in ``root`` and, beside it, ``outside`` holding what must stay unread."""

    def __init__(self, tmp_path: Path, sample: str) -> None:
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.key = self.outside / "id_ed25519"
        self.key.write_text(KEY_TEXT)
        self.key.chmod(0o600)
        (self.outside / "version").write_text(OUTSIDE_KERNEL)
        self.root = copy_sample(sample, tmp_path / "root")

    def link(self, machine_path: str, target: str) -> None:
        path = self.root / machine_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)

    def climbing(self, machine_path: str, host_file: Path) -> str:
        """A relative link text that, followed on this machine, leaves the root for host_file."""
        depth = machine_path.strip("/").count("/")
        return "../" * (depth + 1) + os.path.relpath(host_file, self.root.parent)

    def assert_untouched(self, watch: OutsideWatch, *outputs: str) -> None:
        events = watch.events()
        assert events == [], f"llmtpu touched files outside the root: {events}"
        assert self.key.read_text() == KEY_TEXT
        watch.events()  # that read was ours: the next look starts clean
        for output in outputs:
            assert MARKER not in output
            assert os.uname().version not in output, "this machine's own kernel was judged"


def doctor_json(capsys: pytest.CaptureFixture[str], root: Path) -> tuple[dict, str]:
    code = main(["doctor", "--root", str(root), "--json"])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    return json.loads(out), out + err


def checks(document: dict) -> dict[str, dict]:
    return {c["id"]: c for c in document["checks"]}


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_doctor_never_reads_a_key_linked_from_ld_so_conf(tmp_path: Path, capsys, how: str) -> None:
    hostile = Hostile(tmp_path, "soc-board-ok")
    conf = "/etc/ld.so.conf.d/libsophon.conf"
    hostile.link(conf, str(hostile.key) if how == "absolute" else hostile.climbing(conf, hostile.key))
    # The link really leads to the key when this machine follows it.
    assert (hostile.root / conf.lstrip("/")).read_text() == KEY_TEXT
    with OutsideWatch(hostile.outside) as watch:
        document, output = doctor_json(capsys, hostile.root)
        hostile.assert_untouched(watch, output)
    install = checks(document)["libsophon.install"]
    assert conf in json.dumps(install["evidence"])  # the doctor looked, inside the root, and found nothing


@pytest.mark.parametrize("link", ["/proc/sys/kernel/version", "outside-version", "climbing"])
def test_doctor_judges_the_sysroots_kernel_not_this_machines(tmp_path: Path, capsys, link: str) -> None:
    hostile = Hostile(tmp_path, "soc-board-ok")
    version = "/proc/sys/kernel/version"
    text = {"/proc/sys/kernel/version": version, "outside-version": str(hostile.outside / "version"),
            "climbing": hostile.climbing(version, hostile.outside / "version")}[link]
    hostile.link(version, text)
    with OutsideWatch(hostile.outside) as watch:
        document, output = doctor_json(capsys, hostile.root)
        hostile.assert_untouched(watch, output)
    kernel = checks(document)["kernel.date"]
    assert kernel["status"] != "ok", kernel
    if link == "/proc/sys/kernel/version":  # the link names itself inside the root: a loop, said so
        assert "too many levels of symbolic links" in json.dumps(kernel)


def test_report_archive_holds_nothing_from_outside(tmp_path: Path, capsys) -> None:
    hostile = Hostile(tmp_path, "pcie-host-ok")
    hostile.link("/etc/ld.so.conf.d/libsophon.conf", str(hostile.key))
    hostile.link("/proc/sys/kernel/version", "/proc/sys/kernel/version")
    hostile.link("/proc/bmsophon/driver_version", hostile.climbing("/proc/bmsophon/driver_version", hostile.key))
    archive = tmp_path / "out" / "report.tar.gz"
    archive.parent.mkdir()
    with OutsideWatch(hostile.outside) as watch:
        code = main(["report", "-o", str(archive), "--root", str(hostile.root)])
        out, err = capsys.readouterr()
        assert code == 0, err
        with tarfile.open(archive) as tar:
            members = [tar.extractfile(m).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                       for m in tar.getmembers() if m.isfile()]
        hostile.assert_untouched(watch, out, err, *members)
    doctor = next(m for m in members if '"llmtpu.doctor/1"' in m)
    assert "/etc/ld.so.conf.d/libsophon.conf" in doctor


def test_models_and_clock_show_read_only_the_root(tmp_path: Path, capsys) -> None:
    hostile = Hostile(tmp_path, "soc-board-downclocked")
    debugfs = hostile.root / "sys/kernel/debug"
    # The outside holds what the links name, so following one would open a real file there.
    shutil.copytree(debugfs / "ion", hostile.outside / "ion")
    shutil.copytree(debugfs / "clk/tpll_clock", hostile.outside / "tpll_clock")
    hostile.link("/sys/kernel/debug/ion", str(hostile.outside / "ion"))
    hostile.link("/sys/kernel/debug/clk/tpll_clock", hostile.climbing("/sys/kernel/debug/clk/tpll_clock",
                                                                       hostile.outside / "tpll_clock"))
    hostile.link("/opt/sophon/libsophon-current", hostile.climbing("/opt/sophon/libsophon-current", hostile.outside))
    with OutsideWatch(hostile.outside) as watch:
        codes = [main(["models", "--root", str(hostile.root), "--json"]),
                 main(["clock", "show", "--root", str(hostile.root), "--json"])]
        out, err = capsys.readouterr()
        hostile.assert_untouched(watch, out, err)
    assert "Traceback" not in err and codes[0] == 0


def test_fifos_in_a_sysroot_neither_hang_nor_count_as_evidence(tmp_path: Path) -> None:
    """A pipe where a file should be, held open by a writer that never writes (a read would block)."""
    hostile = Hostile(tmp_path, "soc-board-ok")
    fifos = ["/_cmd/dmesg.txt", "/proc/sys/kernel/version", "/etc/ld.so.conf.d/libsophon.conf"]
    writers = []
    for machine in fifos:
        path = hostile.root / machine.lstrip("/")
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        writers.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))  # a writer exists: reads would wait
    try:
        run = subprocess.run([sys.executable, "-m", "llmtpu", "doctor", "--root", str(hostile.root), "--json"],
                             capture_output=True, text=True, timeout=120)
    finally:
        for fd in writers:
            os.close(fd)
    assert "Traceback" not in run.stderr
    found = checks(json.loads(run.stdout))
    assert found["kernel.date"]["status"] != "ok"
    reason = json.dumps(found["kernel.date"])
    assert "not a regular file" in reason and "fifo" in reason, reason
    assert found["kernel.log"]["status"] != "ok"


def test_a_device_node_in_a_sysroot_is_not_opened(tmp_path: Path) -> None:
    """A copy of /dev/zero where a proc file should be: opened, it would answer with endless zeros."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    os.mknod(root / "proc" / "cpuinfo", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    with pytest.raises(PathRefused, match="is a char, not a regular file"):
        LocalTarget(str(root)).read_bytes("/proc/cpuinfo")


def swapping(folder: Path, link_to: Path) -> tuple[threading.Event, threading.Thread]:
    """A thread that keeps exchanging ``folder`` with a link to ``link_to`` (renameat2 EXCHANGE).

    The name always exists, as the folder or as the link, so a walk can meet either at any step.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    require(hasattr(libc, "renameat2"), "renameat2 is not available here")
    link = folder.with_name(folder.name + ".link")
    link.symlink_to(link_to)
    names = os.fsencode(folder), os.fsencode(link)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            if libc.renameat2(AT_FDCWD, names[0], AT_FDCWD, names[1], RENAME_EXCHANGE) != 0:
                raise OSError(ctypes.get_errno(), "renameat2 failed", folder)

    return stop, threading.Thread(target=swap)


def test_a_link_swapped_in_during_reads_never_leads_out(tmp_path: Path) -> None:
    """The walk opens each folder by descriptor with O_NOFOLLOW: no check-then-open window.

    One thread keeps exchanging ``etc`` with a link to a folder outside that has the same layout;
    the reads never see the outside's content and never open it.
    """
    hostile = Hostile(tmp_path, "soc-board-ok")
    decoy = hostile.outside / "etc" / "ld.so.conf.d"
    decoy.mkdir(parents=True)
    (decoy / "libsophon.conf").write_text(KEY_TEXT)
    target = LocalTarget(str(hostile.root))
    stop, swapper = swapping(hostile.root / "etc", hostile.outside / "etc")
    seen: set[str] = set()
    with OutsideWatch(hostile.outside) as watch:
        swapper.start()
        try:
            for _ in range(2000):
                try:
                    seen.add(target.read_text("/etc/ld.so.conf.d/libsophon.conf"))
                except OSError:
                    seen.add("error")
        finally:
            stop.set()
            swapper.join()
        hostile.assert_untouched(watch, *seen)
    assert "/opt/sophon/libsophon-current/lib\n" in seen
