"""Real version texts (bm_version, uname, driver_version) from public sources, each judged.

One TOML file per text: where it was posted (``source``), what it says, and the verdict the
source supports. The parsers must read every one, and the doctor on a sample machine carrying
that text must give that verdict.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from llmtpu.doctor import facts
from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.target import LocalTarget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEXTS = sorted(Path(__file__).parent.glob("*.toml"))


def load(path: Path) -> dict:
    case = tomllib.loads(path.read_text())
    case["text"] = case["text"].strip()
    return case


@pytest.mark.parametrize("path", TEXTS, ids=[p.stem for p in TEXTS])
def test_real_text_parses_and_gets_its_verdict(path: Path, sysroot) -> None:
    case = load(path)
    assert case["source"] and case["verdict"] in ("ok", "warn", "fail")
    text = case["text"]
    if case["kind"] == "bm_version":
        parsed = facts.parse_bm_version(text)
        assert parsed is not None and parsed.sdk == case["sdk"] and parsed.libsophon == case["libsophon"]
        assert facts.parse_kernel_build_date(re.sub(r"^.*?#", "#", parsed.kernel or "")) == case["build_date"]
        root = sysroot("soc-board-ok")
        (root / "_cmd/bm_version.txt").write_text(text + "\n")
        status = root / "var/lib/dpkg/status"
        status.write_text(status.read_text().replace("Version: 0.5.1", f"Version: {case['libsophon']}"))
        (root / "proc/sys/kernel/version").write_text(re.sub(r"^.*?#", "#", parsed.kernel or "") + "\n")
        check = "sdk.version"
    elif case["kind"] == "uname":
        assert facts.parse_kernel_build_date(text) == case["build_date"]
        root = sysroot("soc-board-ok")
        (root / "proc/sys/kernel/version").write_text(text + "\n")
        check = "kernel.date"
    else:
        driver = facts.parse_driver_version(text)
        assert driver is not None and driver.version == case["version"] and driver.released == case["build_date"]
        root = sysroot("pcie-host-ok")
        (root / "proc/bmsophon/driver_version").write_text(text + "\n")
        check = "sdk.version"
    report = run_doctor(LocalTarget(str(root)), DoctorOptions())
    got = {r.id: r for r in report.results}[check]
    assert got.status == case["verdict"], got.summary
