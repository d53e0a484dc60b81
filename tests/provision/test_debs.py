"""Installing the sophon debs with real dpkg into sysroot copies of the samples: plan, apply, verify, undo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.provision import debs, undo
from llmtpu.provision.operation import Journal, OperationError
from llmtpu.target import LocalTarget
from tests.provision.conftest import cli, fingerprint


def install(root: Path, folder: Path) -> debs.InstallDebs:
    target = LocalTarget(str(root))
    operation = debs.InstallDebs(debs.debs_in(str(folder)))
    operation.apply(target, operation.plan(target), Journal(target))
    return operation


def statuses(root: Path) -> dict[str, tuple[str, str]]:
    return {name: (i.version, i.status) for name, i in debs.installed_packages(LocalTarget(str(root))).items()}


def test_plan_says_what_is_installed_what_changes_in_which_order(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    plan = debs.InstallDebs(debs.debs_in(str(release("0.5.1")))).plan(LocalTarget(str(root)))
    assert [c.what for c in plan.changes] == [
        "dpkg -r sophon-libsophon-dev", "dpkg -r sophon-libsophon", "dpkg -r sophon-driver",
        "dpkg -i sophon-driver_0.5.1_amd64.deb", "dpkg -i sophon-libsophon_0.5.1_amd64.deb",
        "dpkg -i sophon-libsophon-dev_0.5.1_amd64.deb"]
    text = "\n".join(plan.lines())
    assert "dpkg says installed now: sophon-driver 0.4.9 (ii)" in text
    assert "driver -> libsophon -> libsophon-dev" in text
    assert "kept for undo: sophon-driver 0.4.9: no deb (dpkg has no file list" in text
    assert fingerprint(root) == before  # planning reads only


def test_dry_run_prints_only_the_plan(debroot, release, capsys) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    assert cli(["debs", "apply", "--debs", str(release("0.5.1")), "--root", str(root), "--dry-run"]) == 0
    assert "6 change(s)" in capsys.readouterr().out
    assert fingerprint(root) == before
    assert not (root / "var/lib/llmtpu").exists()


def test_apply_verify_apply_again_then_undo_byte_for_byte(debroot, release, capsys) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    folder = release("0.5.1")
    assert cli(["debs", "apply", "--debs", str(folder), "--root", str(root), "--yes"]) == 0
    assert "verified" in capsys.readouterr().out
    assert statuses(root) == {p: ("0.5.1", "ii") for p in debs.PACKAGE_ORDER}
    assert (root / "proc/bmsophon/driver_version").read_text().startswith("release version:0.5.1")
    report = run_doctor(LocalTarget(str(root)), DoctorOptions())
    status = {r.id: r.status for r in report.results}
    assert status["driver.date"] == status["libsophon.install"] == status["libsophon.packages"] == "ok"

    assert cli(["debs", "apply", "--debs", str(folder), "--root", str(root), "--yes"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(Journal(LocalTarget(str(root))).records()) == 1

    assert cli(["undo", "--root", str(root), "--yes"]) == 0
    assert "undone" in capsys.readouterr().out
    assert fingerprint(root) == before
    assert cli(["undo", "--root", str(root), "--yes"]) == 2  # Exit.FAILED
    assert "nothing to undo" in capsys.readouterr().err


def test_failing_postinst_is_rolled_back_and_reported_exactly(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    (root / "FAIL-DRIVER-POSTINST").write_text("")
    before = fingerprint(root)
    with pytest.raises(OperationError) as caught:
        install(root, release("0.5.1"))
    message = str(caught.value)
    assert "dpkg -i sophon-driver_0.5.1_amd64.deb failed" in message
    assert "post-installation script subprocess returned error exit status 1" in message
    assert "rolled back" in message and "sophon-driver 0.4.9 (ii)" in message
    assert fingerprint(root) == before
    assert Journal(LocalTarget(str(root))).last() is None


def test_upgrade_keeps_a_rebuilt_deb_and_undo_reinstalls_it(debroot, release) -> None:
    root = debroot(None)
    install(root, release("0.5.0"))
    for kept in (root / "var/lib/llmtpu/debs").glob("*0.5.0*"):
        kept.unlink()  # no cached copy left: undo must rely on the deb rebuilt from dpkg's database
    before = fingerprint(root)
    operation = debs.InstallDebs(debs.debs_in(str(release("0.5.1"))))
    target = LocalTarget(str(root))
    plan = operation.plan(target)
    assert "kept for undo: sophon-libsophon 0.5.0: a deb rebuilt with dpkg-deb" in "\n".join(plan.lines())
    operation.apply(target, plan, Journal(target))
    assert operation.verify(target) == []
    entry = undo.newest(target)
    kept = {k["package"]: k for k in entry.undo["kept_debs"]}
    rebuilt = root / kept["sophon-libsophon"]["machine_path"].lstrip("/")
    listing = subprocess.run(["dpkg-deb", "-c", str(rebuilt)], capture_output=True, text=True, check=True).stdout
    assert "./opt/sophon/libsophon-0.5.0/lib/libbmrt.so" in listing
    assert "sophon-libsophon" in subprocess.run(["dpkg-deb", "-f", str(rebuilt), "Package"], capture_output=True,
                                                text=True, check=True).stdout
    plan = undo.undo(target, entry)
    assert "dpkg -i" in "\n".join(plan.lines())
    assert statuses(root) == {p: ("0.5.0", "ii") for p in debs.PACKAGE_ORDER}
    assert fingerprint(root) == before


def test_undo_refuses_to_overwrite_what_changed_since_and_leaves_others_edits(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    install(root, release("0.5.1"))
    target = LocalTarget(str(root))
    link = root / "opt/sophon/libsophon-current"
    link.unlink()
    link.symlink_to("/opt/sophon/libsophon-9.9")
    with pytest.raises(OperationError, match="changed since the install, e.g. /opt/sophon/libsophon-current"):
        undo.plan_undo(target, undo.newest(target))
    link.unlink()
    link.symlink_to("/opt/sophon/libsophon-0.5.1")
    # the install left libsophon.conf as it was (same text); an edit made since is someone else's
    (root / "etc/ld.so.conf.d/libsophon.conf").write_text("/opt/sophon/libsophon-current/lib\n/usr/local/lib\n")
    plan = undo.undo(target, undo.newest(target))
    assert "left alone (changed by something else since the install): /etc/ld.so.conf.d/libsophon.conf" in \
        "\n".join(plan.lines())
    assert (root / "etc/ld.so.conf.d/libsophon.conf").read_text().endswith("/usr/local/lib\n")
    assert (root / "proc/bmsophon/driver_version").read_text().startswith("release version:0.4.9")


def test_folder_with_mixed_releases_is_refused(tmp_path: Path, release) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.deb").write_bytes((release("0.5.0") / "sophon-libsophon_0.5.0_amd64.deb").read_bytes())
    (mixed / "b.deb").write_bytes((release("0.5.1") / "sophon-driver_0.5.1_amd64.deb").read_bytes())
    with pytest.raises(OperationError, match="different releases"):
        debs.debs_in(str(mixed))
