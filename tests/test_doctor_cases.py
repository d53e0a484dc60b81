"""Data-driven doctor tests: one JSON file per case in tests/doctor_cases/ (pyinfra style).

A case names a sample sysroot, edits to make to a copy of it (write text or bytes, remove,
make a folder, a FIFO or a symlink, substitute text), options, and the statuses expected per check.
Adding a case means adding a file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.target import LocalTarget

CASES = sorted((Path(__file__).parent / "doctor_cases").glob("*.json"))


def apply_edit(root: Path, edit: dict) -> None:
    path = root / edit["path"].lstrip("/")
    if edit.get("remove"):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if edit.get("mkdir"):
        path.mkdir()
    elif edit.get("fifo"):
        os.mkfifo(path)
    elif "symlink" in edit:
        path.symlink_to(edit["symlink"])
    elif "sub" in edit:
        old, new = edit["sub"]
        text = path.read_text()
        assert old in text, f"case edit does not apply: {old!r} not in {path}"
        path.write_text(text.replace(old, new))
    else:
        data = bytes.fromhex(edit["hex"]) if "hex" in edit else edit["text"].encode()
        data += edit.get("repeat", "").encode() * edit.get("times", 0)
        if path.is_symlink():
            path.unlink()
        path.write_bytes(data)


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_doctor_case(case_file: Path, sysroot) -> None:
    case = json.loads(case_file.read_text())
    root = sysroot(case["sample"])
    for edit in case.get("edits", []):
        apply_edit(root, edit)
    options = DoctorOptions(**case.get("options", {}))
    report = run_doctor(LocalTarget(str(root)), options)
    by_id = {r.id: r for r in report.results}
    got = {check_id: by_id[check_id].status for check_id in case["expect"]}
    assert got == case["expect"], {i: by_id[i].summary for i in case["expect"]}
    for check_id, fragment in case.get("summary", {}).items():
        assert fragment in by_id[check_id].summary, by_id[check_id].summary
    for check_id, fix_id in case.get("fix", {}).items():
        assert by_id[check_id].fix is not None and by_id[check_id].fix.id == fix_id
    for res in report.results:
        if res.status == "ok":
            assert res.evidence or res.id == "machine.kind", f"{res.id} says ok without evidence"


def test_every_sample_has_a_case() -> None:
    samples = {p.name for p in (Path(__file__).parent / "samples").iterdir() if p.is_dir()}
    covered = {json.loads(c.read_text())["sample"] for c in CASES}
    assert samples <= covered
