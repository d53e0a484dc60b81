"""Fault catalogue for `debs apply` (issue 11 items 12-16, issue 14 item 7), with real dpkg.

Each test is one way an apply went wrong on real machines: scripts running on the controller,
a rollback that did not reinstall, a Ctrl-C leaving no way back, a wrong deb found too late,
a script's own error dropped, a -dev package silently lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtpu.provision import debs, undo
from llmtpu.provision.operation import Journal, OperationError
from llmtpu.target import LocalTarget
from tests.conftest import require
from tests.provision.conftest import cli, fingerprint
from tests.provision.debfactory import MODPROBE_FAILURE, build_release


def statuses(root: Path) -> dict[str, tuple[str, str]]:
    return {name: (i.version, i.status) for name, i in debs.installed_packages(LocalTarget(str(root))).items()}


def install(root: Path, folder: Path) -> None:
    target = LocalTarget(str(root))
    operation = debs.InstallDebs(debs.debs_in(str(folder)))
    operation.apply(target, operation.plan(target), Journal(target))


def llmtpu(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtpu", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, **kwargs)


# -- 12: maintainer scripts of a --root install never run on this machine ---------------------

def test_postinst_ignoring_dpkg_root_writes_inside_the_root_not_on_the_controller(debroot, tmp_path) -> None:
    root = debroot("pcie-host-old-driver")
    marker = tmp_path / "controller" / "written-by-postinst"
    folder = tmp_path / "debs-marker"
    build_release(tmp_path / "build-marker", folder, "0.5.1", marker=str(marker))
    assert cli(["debs", "apply", "--debs", str(folder), "--root", str(root), "--yes"]) == 0
    assert not marker.exists(), "a maintainer script wrote on the controller"
    assert (root / str(marker).lstrip("/")).read_text() == "written-by-postinst\n"
    # Sophgo-like driver scripts write /usr/src and /var/lib/dkms by absolute path: the root's
    assert (root / "usr/src/bmsophon-0.5.1/dkms.conf").exists()
    assert (root / "var/lib/dkms/bmsophon/0.5.1/module/bmsophon.ko").exists()


def test_root_without_a_shell_is_refused_at_plan_time_unless_opted_in(sysroot, release, capsys) -> None:
    root = sysroot("pcie-host-old-driver")  # a sample tree: no /bin/sh to run scripts inside
    before = fingerprint(root)
    code = cli(["debs", "apply", "--debs", str(release("0.5.1")), "--root", str(root), "--yes"])
    err = capsys.readouterr().err
    assert code == 64
    assert len(err.strip().splitlines()) == 1
    assert "maintainer scripts cannot run inside it" in err and "--scripts-on-this-machine" in err
    assert fingerprint(root) == before
    assert cli(["debs", "plan", "--debs", str(release("0.5.1")), "--root", str(root),
                "--scripts-on-this-machine"]) == 0
    assert "maintainer scripts run on THIS machine" in capsys.readouterr().out
    assert fingerprint(root) == before


# -- 13 + 16: a failed apply is rolled back through dpkg, and the script's words are shown ----

def test_failed_apply_reinstalls_the_old_debs_so_their_dkms_state_comes_back(debroot, release) -> None:
    root = debroot(None)
    install(root, release("0.5.0"))
    dkms_old = root / "var/lib/dkms/bmsophon/0.5.0/module/bmsophon.ko"
    source_old = root / "usr/src/bmsophon-0.5.0/dkms.conf"
    assert dkms_old.exists() and source_old.exists()
    (root / "FAIL-DRIVER-POSTINST-0.5.1").write_text("")
    before = fingerprint(root)
    with pytest.raises(OperationError) as caught:
        install(root, release("0.5.1"))
    message = str(caught.value)
    assert "dpkg -i sophon-driver_0.5.1" in message and "returned error exit status 1" in message
    assert MODPROBE_FAILURE in message  # the script's own last line, not only dpkg's summary
    assert "rolled back to the state before" in message
    assert statuses(root) == {p: ("0.5.0", "ii") for p in debs.PACKAGE_ORDER}
    # the old driver's postinst ran again: what dkms had made is back, the new one's is gone
    assert dkms_old.read_text() == "bmsophon.ko built from bmsophon-0.5.0\n"
    assert source_old.exists()
    assert not (root / "var/lib/dkms/bmsophon/0.5.1").exists()
    assert fingerprint(root) == before
    assert Journal(LocalTarget(str(root))).last().operation == "debs.install"  # the 0.5.0 install only
    assert Journal(LocalTarget(str(root))).last().undo["installed"][0]["version"] == "0.5.0"


def test_undo_reinstalls_the_old_debs_and_their_scripts_recreate_dkms_state(debroot, release) -> None:
    root = debroot(None)
    install(root, release("0.5.0"))
    before = fingerprint(root)
    install(root, release("0.5.1"))
    assert not (root / "usr/src/bmsophon-0.5.0").exists()
    target = LocalTarget(str(root))
    undo.undo(target, undo.newest(target))
    assert (root / "var/lib/dkms/bmsophon/0.5.0/module/bmsophon.ko").exists()
    assert statuses(root) == {p: ("0.5.0", "ii") for p in debs.PACKAGE_ORDER}
    assert fingerprint(root) == before


# -- 15: every deb checked at plan time, before anything is removed ----------------------------

def test_wrong_architecture_is_refused_at_plan_time(debroot, tmp_path, capsys) -> None:
    root = debroot("pcie-host-old-driver")  # its dpkg status says amd64
    folder = tmp_path / "debs-arm64"
    build_release(tmp_path / "build-arm64", folder, "0.5.1", arch="arm64")
    before = fingerprint(root)
    assert cli(["debs", "apply", "--debs", str(folder), "--root", str(root), "--yes"]) == 64
    err = capsys.readouterr().err
    assert "Architecture arm64, but" in err and "amd64" in err and "var/lib/dpkg/status" in err
    assert fingerprint(root) == before
    assert statuses(root)["sophon-driver"] == ("0.4.9", "ii")


def test_dpkg_arch_file_of_the_root_is_what_counts(debroot, release, capsys) -> None:
    root = debroot(None)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/arch").write_text("arm64\n")
    assert cli(["debs", "plan", "--debs", str(release("0.5.1")), "--root", str(root)]) == 64
    assert "installs arm64 (from" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["not-a-deb", "truncated"])
def test_unreadable_deb_is_refused_before_the_old_packages_are_removed(debroot, release, tmp_path, damage,
                                                                       capsys) -> None:
    root = debroot("pcie-host-old-driver")
    folder = tmp_path / "damaged"
    folder.mkdir()
    for deb in release("0.5.1").iterdir():
        (folder / deb.name).write_bytes(deb.read_bytes())
    libsophon = folder / "sophon-libsophon_0.5.1_amd64.deb"
    data = libsophon.read_bytes()
    libsophon.write_bytes(b"<html>404 Not Found</html>\n" if damage == "not-a-deb" else data[:len(data) - 200])
    before = fingerprint(root)
    assert cli(["debs", "apply", "--debs", str(folder), "--root", str(root), "--yes"]) == 64
    assert "sophon-libsophon_0.5.1_amd64.deb" in capsys.readouterr().err
    assert fingerprint(root) == before


# -- 14.7: a folder without the -dev deb does not silently drop sophon-libsophon-dev -----------

def test_folder_without_dev_deb_says_dev_is_removed_and_asks(debroot, release, tmp_path) -> None:
    root = debroot(None)
    install(root, release("0.5.0"))
    folder = tmp_path / "no-dev"
    build_release(tmp_path / "build-no-dev", folder, "0.5.1", dev=False)
    before = fingerprint(root)
    planned = llmtpu("debs", "plan", "--debs", str(folder), "--root", str(root))
    assert planned.returncode == 0
    assert "dpkg -r sophon-libsophon-dev (no replacement in the debs folder: stays removed)" in planned.stdout
    assert "sophon-libsophon-dev 0.5.0 will be REMOVED and not reinstalled" in planned.stdout
    refused = llmtpu("debs", "apply", "--debs", str(folder), "--root", str(root))
    assert refused.returncode == 64 and "pass --yes" in refused.stderr
    assert fingerprint(root) == before


# -- 14: an interrupt finishes the running dpkg step, records it, and undo takes it back -------

def test_sigint_mid_apply_finishes_the_step_exits_130_and_undo_restores(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    (root / "SLOW-DRIVER-POSTINST").write_text("")
    started = root / "DRIVER-POSTINST-STARTED"
    proc = subprocess.Popen([sys.executable, "-m", "llmtpu", "debs", "apply", "--debs", str(release("0.5.1")),
                             "--root", str(root), "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver postinst never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # while dpkg -i sophon-driver is in its postinst
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "step 4 of 6 (dpkg -i sophon-driver_0.5.1_amd64.deb) finished" in err
    assert f"llmtpu undo --root {root}" in err
    # the running step completed, nothing after it ran
    assert statuses(root) == {"sophon-driver": ("0.5.1", "ii")}
    entry = Journal(LocalTarget(str(root))).last()
    assert entry is not None and entry.undo["state"] == "interrupted" and entry.undo["steps_done"] == 4
    started.unlink()
    (root / "SLOW-DRIVER-POSTINST").unlink()
    undone = llmtpu("undo", "--root", str(root), "--yes")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "interrupted after step 4" in undone.stdout
    assert fingerprint(root) == before


def wait_for_dpkg_lock(root: Path, seconds: float = 120) -> None:
    """Until no dpkg holds the root's lock (an orphaned dpkg finishes its step on its own)."""
    import fcntl

    lock = root / "var/lib/dpkg/lock-frontend"
    deadline = time.monotonic() + seconds
    while True:
        with open(lock, "a") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                assert time.monotonic() < deadline, "dpkg never let go of its lock"
        time.sleep(0.1)


def test_sigkill_mid_apply_leaves_a_record_undo_repairs(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    (root / "SLOW-DRIVER-POSTINST").write_text("")
    started = root / "DRIVER-POSTINST-STARTED"
    proc = subprocess.Popen([sys.executable, "-m", "llmtpu", "debs", "apply", "--debs", str(release("0.5.1")),
                             "--root", str(root), "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()  # no handler runs: only the record written before the first dpkg step is left
    proc.wait(timeout=60)
    wait_for_dpkg_lock(root)
    entry = Journal(LocalTarget(str(root))).last()
    assert entry is not None and entry.undo["state"] == "applying"
    started.unlink()
    (root / "SLOW-DRIVER-POSTINST").unlink()
    undone = llmtpu("undo", "--root", str(root), "--yes")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "cut before it recorded its result" in undone.stdout
    assert fingerprint(root) == before


def test_not_root_the_scripts_run_chrooted_in_a_user_namespace(debroot, release, tmp_path, monkeypatch) -> None:
    """What an unprivileged user gets (here: this process told it is not root)."""
    require(subprocess.run(["unshare", "--map-root-user", "true"], capture_output=True).returncode == 0,
            "no user namespaces here (unshare --map-root-user)")
    monkeypatch.setattr(debs.os, "geteuid", lambda: 1000)
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    marker = tmp_path / "controller" / "written-by-postinst"
    folder = tmp_path / "debs-marker"
    build_release(tmp_path / "build-marker", folder, "0.5.1", marker=str(marker))
    target = LocalTarget(str(root))
    operation = debs.InstallDebs(debs.debs_in(str(folder)))
    plan = operation.plan(target)
    assert "in a user namespace" in "\n".join(plan.lines())
    operation.apply(target, plan, Journal(target))
    assert not marker.exists() and (root / str(marker).lstrip("/")).exists()
    assert statuses(root) == {p: ("0.5.1", "ii") for p in debs.PACKAGE_ORDER}
    undo.undo(target, undo.newest(target))
    left = {path for path in fingerprint(root) if path.split("/")[0] == "tmp"}  # the marker: no script removes it
    assert {p: v for p, v in fingerprint(root).items() if p not in left} == before


def test_sigint_during_undo_finishes_the_undo_first(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    install(root, release("0.5.1"))
    (root / "SLOW-DRIVER-PRERM").write_text("")
    started = root / "DRIVER-PRERM-STARTED"
    proc = subprocess.Popen([sys.executable, "-m", "llmtpu", "undo", "--root", str(root), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver prerm never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "it was finished first, nothing is left half-way" in err and "undone" in out
    started.unlink()
    (root / "SLOW-DRIVER-PRERM").unlink()
    assert fingerprint(root) == before
    assert Journal(LocalTarget(str(root))).last() is None
