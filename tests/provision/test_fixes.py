"""`doctor --fix` semantics through provision/fixes.py on sample trees, with real dpkg and test-built debs.

How the "reloaded driver" is simulated: the test driver deb's postinst, run by real dpkg chrooted
into the sysroot, writes the sysroot's /proc/bmsophon/driver_version in the real
driver's format, standing in for `modprobe bmsophon` of the new module (tests/provision/debfactory.py).
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.provision import debs, fixes, registry
from llmtpu.provision.operation import OperationError, Plan
from llmtpu.target import LocalTarget
from tests.provision.conftest import cli, fingerprint


def doctor_status(root: Path) -> dict[str, str]:
    return {r.id: r.status for r in run_doctor(LocalTarget(str(root)), DoctorOptions()).results}


def test_doctor_fix_yes_makes_old_driver_host_current_and_undo_restores_it(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    assert doctor_status(root)["driver.date"] == "fail"
    out = io.StringIO()
    code = fixes.doctor_fix(LocalTarget(str(root)), DoctorOptions(), assume_yes=True, out=out,
                            sources=fixes.FixSources(debs_dir=str(release("0.5.1")))).exit_code
    text = out.getvalue()
    assert code == 0, text
    assert "for driver.date:" in text and "dpkg -i sophon-driver_0.5.1_amd64.deb" in text
    assert "re-check driver.date: ok: driver 0.5.1" in text
    status = doctor_status(root)
    assert status["driver.date"] == status["libsophon.install"] == status["libsophon.packages"] == "ok"

    again = io.StringIO()
    assert fixes.doctor_fix(LocalTarget(str(root)), DoctorOptions(), True, again,
                            fixes.FixSources(debs_dir=str(release("0.5.1")))).exit_code == 0
    assert "nothing to do" in again.getvalue()

    assert cli(["undo", "--root", str(root), "--yes"]) == 0
    assert fingerprint(root) == before


def test_doctor_fix_refuses_without_yes_and_without_a_terminal(debroot, release) -> None:
    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)
    with pytest.raises(OperationError, match="no terminal to ask on"):
        fixes.doctor_fix(LocalTarget(str(root)), DoctorOptions(), False, io.StringIO(),
                         fixes.FixSources(debs_dir=str(release("0.5.1"))), stdin=io.StringIO("y\n"))
    assert fingerprint(root) == before


def test_half_configured_packages_are_configured_and_undone(debroot, release) -> None:
    root = debroot(None)
    (root / "FAIL-DRIVER-POSTINST").write_text("")
    folder = release("0.5.1")
    target = LocalTarget(str(root))
    subprocess.run([*debs.dpkg_command(target), "-i", *(str(p) for p in sorted(folder.iterdir()))],
                   capture_output=True, check=False)
    (root / "FAIL-DRIVER-POSTINST").unlink()
    assert debs.installed_packages(target)["sophon-driver"].status == "iF"
    before = fingerprint(root)
    result = {r.id: r for r in run_doctor(target, DoctorOptions()).results}
    if result["libsophon.packages"].fix is not None:  # an empty tree is no PCIe host: run the op directly
        assert result["libsophon.packages"].fix.id == "debs.configure"
    operation = registry.FACTORIES["debs.configure"](target, fixes.FixSources().as_args())
    plan = operation.plan(target)
    assert [c.what for c in plan.changes] == ["dpkg --configure sophon-driver"]
    from llmtpu.provision.operation import Journal

    operation.apply(target, plan, Journal(target))
    assert operation.verify(target) == []
    assert cli(["undo", "--root", str(root), "--yes"]) == 0
    assert fingerprint(root) == before


def test_root_needed_and_sudo_would_ask_for_a_password(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    os.chmod(fake / "sudo", 0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    plans = [Plan("debs.install", "h", changes=[debs.Change("dpkg -i x")], needs_root=True)]
    assert fixes.needs_sudo(plans, euid=1000) and not fixes.needs_sudo(plans, euid=0)
    with pytest.raises(OperationError, match="sudo would ask for a password"):
        fixes.rerun_with_sudo(["doctor", "--fix"])


def test_cli_doctor_fix_yes_then_undo_is_byte_for_byte(debroot, release) -> None:
    """The provisioning issue's done-when, through the real `llmtpu` command in a subprocess."""
    import json
    import sys

    root = debroot("pcie-host-old-driver")
    before = fingerprint(root)

    def llmtpu(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmtpu", *args], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    refused = llmtpu("doctor", "--root", str(root), "--fix", "--debs", str(release("0.5.1")))
    assert refused.returncode == 64 and "pass --yes" in refused.stderr
    assert fingerprint(root) == before
    fixed = llmtpu("doctor", "--root", str(root), "--fix", "--yes", "--debs", str(release("0.5.1")))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    report = json.loads(llmtpu("doctor", "--root", str(root), "--json").stdout)
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert status["driver.date"] == status["libsophon.install"] == status["libsophon.packages"] == "ok"
    undone = llmtpu("undo", "--root", str(root), "--yes")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert fingerprint(root) == before
