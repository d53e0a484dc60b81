"""The doctor's smoke.inference check, for real: the tiny bmodel on the cmodel through the engine.

Done-when of the engine issue: `llmtpu doctor --root SAMPLE` with the engine pointed at the
cmodel reports a passing smoke test, and the broken cases fail with the right fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llmtpu.doctor.checks import DoctorOptions
from llmtpu.doctor.report import run_doctor
from llmtpu.runtime import testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.target import LocalTarget

SAMPLES = Path(__file__).parent.parent / "samples"


def smoke(options: DoctorOptions, sample: str = "soc-board-ok"):
    report = run_doctor(LocalTarget(str(SAMPLES / sample)), options, ["smoke.inference"])
    return report.results[0]


def test_doctor_cli_reports_a_passing_smoke_test(built_engine: BuiltEngine, cmodel_lib: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmtpu", "doctor", "--root", str(SAMPLES / "pcie-host-ok"), "--json",
         "--only", "smoke.inference", "--smoke", "--engine", built_engine.binary, "--lib-dir", str(cmodel_lib)],
        capture_output=True, text=True, timeout=600, env=os.environ)
    check = json.loads(result.stdout)["checks"][0]
    assert check["status"] == "ok", check
    assert result.returncode == 0 and "8 tokens" in check["summary"] and "tok/s" in check["summary"]


def test_without_smoke_flag_it_is_skipped_with_the_reason() -> None:
    res = smoke(DoctorOptions())
    assert res.status == "skip" and "--smoke" in res.summary


def test_corrupted_bmodel_fails_with_a_bad_model_fix(built_engine: BuiltEngine, cmodel_lib: Path,
                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken.bmodel"
    data = bytearray(testmodel.bmodel_path().read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 3]))
    res = smoke(DoctorOptions(smoke=True, engine=built_engine.binary, lib_dir=str(cmodel_lib),
                              smoke_model=str(broken), smoke_timeout=120))
    assert res.status == "fail" and res.fix is not None and "download it again" in res.fix.summary


def test_missing_runtime_points_at_the_libsophon_fix(built_engine: BuiltEngine, tmp_path: Path) -> None:
    pcie = smoke(DoctorOptions(smoke=True, engine=built_engine.binary, lib_dir=str(tmp_path)), "pcie-host-ok")
    assert pcie.status == "fail" and pcie.fix is not None and pcie.fix.id == "debs.install"
    # a reflash erases the eMMC: offered only where the image is too old (issue 12 item 3)
    soc = smoke(DoctorOptions(smoke=True, engine=built_engine.binary, lib_dir=str(tmp_path)), "soc-board-ok")
    assert soc.fix is not None and soc.fix.id != "sdcard.flash", soc.fix
    old = smoke(DoctorOptions(smoke=True, engine=built_engine.binary, lib_dir=str(tmp_path)), "soc-board-old-kernel")
    assert old.fix is not None and old.fix.id == "sdcard.flash", old.fix


def test_engine_that_never_answers_is_a_timeout_with_the_reboot_fix(tmp_path: Path) -> None:
    stand_in = tmp_path / "hung-engine"
    stand_in.write_text("#!/bin/sh\nexec sleep 600\n")
    stand_in.chmod(0o755)
    res = smoke(DoctorOptions(smoke=True, engine=str(stand_in), smoke_timeout=2))
    assert res.status == "fail" and res.fix is not None and res.fix.id == "reboot"


def test_all_bang_output_fails_with_the_downclock_fix(tmp_path: Path) -> None:
    """A stand-in engine that speaks the protocol but answers token 0 ('!' in GPT-style vocabularies)."""
    stand_in = tmp_path / "bang-engine"
    stand_in.write_text("""#!/bin/sh
echo "ready protocol=1 layers=2 seq=64 hidden=64 vocab=256 dtype=f16 load_ms=1"
while read -r line; do
  [ "$line" = quit ] && exit 0
  echo "prefill ms=1 tokens=6"
  for i in 1 2 3 4 5 6 7 8; do echo "token 0 ms=1 gap=9 nonfinite=0"; done
  echo "done tokens=8 reason=length prefill_ms=1 decode_ms=8"
done
""")
    stand_in.chmod(0o755)
    res = smoke(DoctorOptions(smoke=True, engine=str(stand_in), smoke_timeout=20))
    assert res.status == "fail", res.summary
    assert res.fix is not None and res.fix.id == "clock.apply"


def test_punctuation_only_text_fails_even_when_tokens_vary(tmp_path: Path) -> None:
    """`!"!"…` alternates two ids, so no token repeats; the text beside --smoke-model's tokenizer
    is punctuation only: LLM-TPU FAQ Q3's garbage, whatever the ids (issue 12 item 5)."""
    import shutil

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(testmodel.bmodel_path().parent / "tokenizer.json", model_dir / "tokenizer.json")
    (model_dir / "m.bmodel").write_bytes(b"stand-in")
    stand_in = tmp_path / "punct-engine"
    stand_in.write_text("""#!/bin/sh
echo "ready protocol=1 layers=2 seq=64 hidden=64 vocab=256 dtype=f16 load_ms=1"
while read -r line; do
  [ "$line" = quit ] && exit 0
  echo "prefill ms=1 tokens=4"
  for i in 33 34 33 34 33 34 33 34; do echo "token $i ms=1 gap=9 nonfinite=0"; done
  echo "done tokens=8 reason=length prefill_ms=1 decode_ms=8"
done
""")
    stand_in.chmod(0o755)
    res = smoke(DoctorOptions(smoke=True, engine=str(stand_in), smoke_model=str(model_dir / "m.bmodel"),
                              smoke_timeout=20))
    assert res.status == "fail", res.summary
    assert res.fix is not None and res.fix.id == "clock.apply"
