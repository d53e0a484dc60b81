"""In a container the doctor's fix installs libsophon of the host driver's release, never a driver."""

from __future__ import annotations

from pathlib import Path

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.target import LocalTarget

SAMPLES = Path(__file__).parent / "samples"


def test_container_fix_matches_the_host_driver_and_installs_no_driver() -> None:
    report = run_doctor(LocalTarget(str(SAMPLES / "pcie-docker-no-libsophon")), DoctorOptions(), ["libsophon.install"])
    fix = report.results[0].fix
    assert fix is not None and fix.id == "debs.install"
    assert "0.5.0" in fix.summary  # the sample's host driver: release version 0.5.0
    commands = "\n".join(fix.commands)
    assert "sophon-driver" not in commands and "driver" not in commands.replace("sophon-libsophon", "")
    assert "sophon-libsophon_0.5.0_amd64.deb" in commands and "sophon-libsophon-dev_0.5.0" in commands, commands
