"""llmtpu/gathered.py: the SSH target's remote program through another transport (a local
shell here, Ansible's connection in the collection): same report as the local doctor, a hung
transport bounded by its deadline, no python3 said plainly, reports rebuilt from their JSON."""

from __future__ import annotations

import subprocess
import threading

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.gathered import GatheredTarget, report_from_json
from llmtpu.target import LocalTarget, TargetError
from tests.conftest import SAMPLES
from tests.fleet.conftest import comparable


def local_shell(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
    done = subprocess.run(["/bin/sh", "-c", command], input=stdin or b"", capture_output=True, timeout=timeout,
                          check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()))
def test_the_same_report_as_the_local_doctor(sample: str) -> None:
    root = str(SAMPLES / sample)
    target = GatheredTarget(sample, root, local_shell)
    remote = run_doctor(target, DoctorOptions()).to_json()
    assert report_from_json(remote).to_json() == remote
    local = run_doctor(LocalTarget(root, name=sample), DoctorOptions()).to_json()
    assert comparable(remote) == comparable(local)
    assert target.round_trips <= 3


def test_a_hung_transport_is_bounded() -> None:
    release = threading.Event()

    def hang(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        release.wait(30)
        return 0, b"", b""

    target = GatheredTarget("frozen", str(SAMPLES / "soc-board-ok"), hang, command_timeout=0.5)
    with pytest.raises(TargetError, match="longer than"):
        target.prefetch(["/proc"])
    release.set()


def test_no_python_on_the_machine_is_said_plainly() -> None:
    target = GatheredTarget("bare", str(SAMPLES / "soc-board-ok"), local_shell, python="/nonexistent/python3")
    with pytest.raises(TargetError, match="no python3 answered there .*ansible_python_interpreter"):
        run_doctor(target, DoctorOptions())


def test_option_like_values_are_refused() -> None:
    with pytest.raises(TargetError, match="absolute"):
        GatheredTarget("b1", "relative", local_shell)
    with pytest.raises(ValueError, match="would reach ssh as an option"):
        GatheredTarget("b1", "/", local_shell, python="-oProxyCommand=x")
