"""`llmtpu explain`: every FAQ/issue error line is found with the right fix; clean logs stay clean."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from llmtpu.doctor import checks
from llmtpu.doctor.explain import Matcher, SignatureError, load_signatures, parse_signatures
from tests.explain.cli import run_cli

HERE = Path(__file__).parent

#: (expected signature id or None, line) — each line as LLM-TPU's FAQ, its issues, libsophon or
#: sophon-sail print it (sources in doctor/signatures.toml); None lines sit beside them in the
#: same reports and must match nothing.
FAQ_LOG = [
    ("bmrt.gdma-dst-coeff",
     "[BMRT][fix_gdma_addr:488] FATAL:gdma dst shouldn't be coeff, origin[0x1071d8000], ctx[0x1071f8000]"),
    (None, "llama2: /home/linaro/LLM-TPU/models/Llama2/demo/demo.cpp:311: void LLama2::init(...): "
           "Assertion `true == ret' failed."),
    ("a53lite.send-api-error", "[a53lite_runtime][error] get function send api error, ret 2"),
    ("a53lite.send-api-error", "[a53lite runtimellerror] get function send api error, ret2"),
    ("bmlib.alloc-gmem", "[bmlib_memory][error] bm_alloc_gmem failed, dev_id = 12, size = 0x25180000"),
    ("bmlib.alloc-gmem", "[bmlib memoryllerrorl bm alloc gmem failed, dev id = 12, size = 0x25180000"),
    ("bmodel.broken",
     "[BMODEL][ModelCtx:520] FATAL: File[../../bmodels/qwen2.5-7b_int4_seq8192_1dev.bmodel] is broken"),
    ("bmodel.broken", "FATAL: size + offset <= binary->size()"),
    ("unzip.short-read", "unzip: short read"),
    ("bmlib.kernel-module-missing", "[a53lite_runtime][error] open file "
     "/opt/sophon/libsophon-current/lib/tpu_module/libbm1684x_kernel_module.so error!!"),
    ("bmlib.kernel-module-missing",
     "[a53lite_runtime][error] /workspace/libsophon/bmlib/src/a53lite_api.cpp 488: load file failed!"),
    ("bmlib.kernel-module-missing", "bm_module is null!"),
    ("bmlib.create-handle", "Create BM Handle Failed. ret = 2"),
    ("bmrt.kernel-module-null", "[BMRT][preload_funcs:2352] FATAL:BMRT_ASSERT: _kernel_modules[core_id]"),
    ("bmrt.kernel-module-null", "[BMRT][load_bmodel:1020] FATAL:_kernel_module shouldn't be NULL"),
    ("bmsmi.devcount", "get devcount failed!"),
    ("bmlib.no-device", "no sophon device found on this PC or Server"),
    ("sail.invalid-tpu-id", "Error: Invalid tpu id: 1!"),
    ("build.lib-not-elf", "/usr/bin/ld:/home/linaro/LLM-TPU/models/language_model/python_demo/../../../support/"
     "lib_soc/libbmrt.so: file format not recognized; treating as linker script"),
    ("build.glibc", "ImportError: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.32' not found "
     "(required by ./chat.cpython-310-x86_64-linux-gnu.so)"),
    ("build.glibc", "ImportError: /lib/x86_64-linux-gnu/libc.so.6: version 'GLIBC 2.32' not found"),
    ("dfss.no-server", "10:21:07 ERROR main.cpp:402: No available server found"),
    ("build.stage-mems", "chat.cpp:471:55: error: \u2018bm_stage_info_t\u2019 "
     "{aka \u2018struct bm_stage_info_s\u2019} "
     "has no member named \u2018output_mems\u2019; did you mean \u2018output_shapes\u2019?"),
    ("python.tokenizer-class",
     "ValueError: Tokenizer class Qwen2Tokenizer does not exist or is not currently imported."),
    ("python.tokenizer-class",
     "ValueError: Tokenizer class LlamaTokenizer does not exist or is not currently imported."),
    ("python.chat-template", "AttributeError: 'LlamaTokenizerFast' object has no attribute 'apply_chat_template'"),
    ("python.torch-shape", "RuntimeError: The size of tensor a (16) must match the size of tensor b (512) "
     "at non-singleton dimension 1"),
    ("python.trust-remote-code", "ValueError: The repository for /workspace/glm4 contains custom code which must "
     "be executed to correctly load the model."),
    ("python.jinja2", "NameError: name 'Extension' is not defined"),
    ("build.vector-default-append", "ValueError: vector::_M_default_append"),
    ("bmrt.device-size", "FATAL:BMRT ASERT: (shape count * data type size) <= get device size(shape count:8388608 "
     "* data type size:2) shouldn't larger than mem get device size:"),
    ("output.all-bang", "Answer: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
    ("output.all-bang", "I!!!!!!!!!!!!!!!!!!!!"),
    ("kernel.firmware-missing", "[    3.141592] bm-sophon0 request_firmware fail, please check if these is "
     "bm1684x_firmware.bin in /lib/firmware !!"),
    ("kernel.firmware-load", "[    3.200000] bmdrv: firmware load failed!"),
    ("kernel.api-timeout", "[ 8812.000001] bmsophon_ioctl bm-sophon0 bmdrv: bmdev_wait_msgfifo "
     "timeout!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
    ("kernel.api-timeout", "[ 8813.000001] bm-sophon0 tpu api [5:GEMM] timeout"),
    ("kernel.ddr-test", "[    2.000000] bmdrv: ddr self test failed!"),
]


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def explain_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, dict]:
    code = run_cli(monkeypatch, ["explain", "--json", str(path)])
    return code, json.loads(capsys.readouterr().out)


def test_faq_log_finds_every_signature_at_its_line(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "faq.log", [line for _, line in FAQ_LOG])
    code, doc = explain_json(monkeypatch, capsys, path)
    assert code == 1
    assert doc["schema"] == "llmtpu.explain/1" and doc["lines"] == len(FAQ_LOG)
    found: dict[int, list[str]] = {}
    for match in doc["matches"]:
        found.setdefault(match["line"], []).append(match["id"])
    for number, (expected, line) in enumerate(FAQ_LOG, 1):
        assert found.get(number, []) == ([expected] if expected else []), line
    # every row has its real lines in tests/real/signatures/cases.toml; these are the FAQ's


def test_faq_matches_carry_the_right_fix(tmp_path, monkeypatch, capsys):
    """Without evidence about the machine: the least destructive fix, never a reflash."""
    path = write(tmp_path, "faq.log", [line for _, line in FAQ_LOG])
    _, doc = explain_json(monkeypatch, capsys, path)
    by_id = {m["id"]: m for m in doc["matches"]}
    assert by_id["bmrt.gdma-dst-coeff"]["fix"]["id"] == "debs.install"
    assert by_id["bmrt.gdma-dst-coeff"]["soc_fix"]["id"] == "none"
    flash = [f for f in by_id["bmrt.gdma-dst-coeff"]["fixes"] if f["id"] == "sdcard.flash"]
    assert flash and flash[0]["when"] == ["soc", "image-old"] and flash[0]["applies"] is None
    assert "sudo dpkg -i sophon-*.deb" in by_id["a53lite.send-api-error"]["fix"]["commands"]
    heaps = [f for f in by_id["bmlib.alloc-gmem"]["fixes"] if f["id"] == "heaps.resize"]
    assert heaps and heaps[0]["when"] == ["soc"] and heaps[0]["applies"] is None
    assert "./memory_edit.sh -c -npu 7615 -vpu 3072 -vpp 3072" in heaps[0]["commands"]
    assert by_id["output.all-bang"]["soc_fix"]["id"] == "clock.apply"
    assert by_id["bmrt.kernel-module-null"]["fix"]["commands"][-1] == "sudo reboot"
    assert by_id["bmlib.create-handle"]["fix"]["id"] == "none"
    assert by_id["python.tokenizer-class"]["fix"]["commands"] == ["pip3 install transformers==4.37.0"]
    assert "apt remove" not in " ".join(by_id["bmlib.kernel-module-missing"]["fix"]["commands"])
    assert by_id["bmlib.kernel-module-missing"]["severity"] == "warn"
    assert all(m["source"] for m in doc["matches"])
    assert all(m["fix"]["id"] != "sdcard.flash" and (m["soc_fix"] or {}).get("id") != "sdcard.flash"
               for m in doc["matches"])


def test_signature_fixes_agree_with_the_doctor():
    """Where a row names a doctor fix, its commands are the doctor's, so both say the same."""
    doctor = {
        "clock.apply": [checks.fix_downclock().commands],
        "sdcard.flash": [checks.fix_reflash_soc().commands],
        "debs.install": [checks.fix_install_debs().commands, checks.fix_libsophon_in_docker().commands],
        "heaps.resize": [checks.fix_heaps(checks.load_models()[checks.DEFAULT_MODEL]).commands],
    }
    known_ids = set(doctor) | {"none", "devices.permissions", "devices.reload"}
    for sig in load_signatures():
        for fix in sig.fixes:
            assert fix.id in known_ids, f"{sig.id}: unknown fix id {fix.id}"
            if fix.id in doctor:
                assert fix.commands in doctor[fix.id], f"{sig.id}: {fix.id} commands differ from doctor/checks.py"


def test_doctor_json_decides_the_fix(tmp_path, monkeypatch, capsys):
    """`--doctor FILE`: the same line gets a reflash only where the doctor found the image too old."""
    line = "[BMRT][fix_gdma_addr:488] FATAL:gdma dst shouldn't be coeff, origin[0x1071d8000], ctx[0x1071f8000]"
    log = write(tmp_path, "run.log", [line])
    fixes = {}
    for name, status, fix in (("old", "fail", {"id": "sdcard.flash", "summary": "s", "commands": []}),
                              ("recent", "ok", None)):
        report = {"schema": "llmtpu.doctor/1", "host": f"board-{name}", "machine_kind": "soc-board",
                  "checks": [{"id": "kernel.date", "status": status, "fix": fix}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
        code = run_cli(monkeypatch, ["explain", "--json", "--doctor", str(tmp_path / f"{name}.json"), str(log)])
        assert code == 1
        fixes[name] = json.loads(capsys.readouterr().out)["matches"][0]["fix"]["id"]
    assert fixes == {"old": "sdcard.flash", "recent": "none"}


@pytest.mark.parametrize("content, message", [
    ("{", "give the output of `llmtpu doctor --json`"),
    ('{"schema": "other/1"}', "not a `llmtpu doctor --json` document"),
])
def test_bad_doctor_json_is_a_usage_error(tmp_path, monkeypatch, capsys, content, message):
    (tmp_path / "d.json").write_text(content)
    log = write(tmp_path, "run.log", ["ok"])
    assert run_cli(monkeypatch, ["explain", "--doctor", str(tmp_path / "d.json"), str(log)]) == 64
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_root_runs_the_doctor_checks_for_evidence(monkeypatch, capsys, tmp_path):
    """--root on the sample board whose kernel predates 20240110: the reflash is the fix."""
    samples = HERE.parent / "samples"
    line = "[BMRT][fix_gdma_addr:488] FATAL:gdma dst shouldn't be coeff, origin[0x1071d8000], ctx[0x1071f8000]"
    log = write(tmp_path, "run.log", [line])
    fixes = {}
    for board in ("soc-board-old-kernel", "soc-board-ok"):
        assert run_cli(monkeypatch, ["explain", "--json", "--root", str(samples / board), str(log)]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["evidence"]["machine_kind"] == "soc-board"
        fixes[board] = doc["matches"][0]["fix"]["id"]
    assert fixes == {"soc-board-old-kernel": "sdcard.flash", "soc-board-ok": "none"}


def test_clean_log_has_no_false_positive(monkeypatch, capsys):
    code = run_cli(monkeypatch, ["explain", str(HERE / "clean.log")])
    out = capsys.readouterr().out
    assert code == 0
    assert "no known error" in out


def test_mixed_log_finds_the_one_real_error(monkeypatch, capsys):
    code, doc = explain_json(monkeypatch, capsys, HERE / "mixed.log")
    assert code == 1
    assert [(m["line"], m["id"]) for m in doc["matches"]] == [(31, "bmrt.gdma-dst-coeff")]
    assert doc["matches"][0]["text"].startswith("[BMRT][fix_gdma_addr:488]")


def test_human_output_names_line_cause_and_commands(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "run.log", ["loading", "\x1b[31m[bmlib_memory][error] bm_alloc_gmem failed\x1b[0m"])
    assert run_cli(monkeypatch, ["explain", str(path)]) == 1
    out = capsys.readouterr().out
    assert "bmlib.alloc-gmem  fail  line 2" in out
    assert "cause: the TPU's device memory is full" in out
    assert "$ bm-smi   # memory use per device while the model runs" in out
    assert "if (heaps.resize) when on a SoC board: give the NPU heap" in out
    assert "\x1b[31m" not in out.split("line 2")[1].splitlines()[1]


def test_stdin_dash_and_carriage_returns(monkeypatch, capsys):
    data = b"[====>    ] 42%\r[=====>   ] 51%\r\n12:00:01 ERROR main.cpp:402: No available server found\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert run_cli(monkeypatch, ["explain", "--json", "-"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["input"] == "<stdin>"
    assert [(m["line"], m["id"]) for m in doc["matches"]] == [(2, "dfss.no-server")]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "absent.log", "no such file"),
    (lambda tmp: tmp, "is a folder"),
])
def test_unreadable_file_is_a_usage_error(tmp_path, monkeypatch, capsys, make, message):
    assert run_cli(monkeypatch, ["explain", str(make(tmp_path))]) == 64
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("row, message", [
    ({"pattern": "("}, "pattern does not compile"),
    ({"pattern": "a(?i)b"}, "inline flags other than a leading"),
    ({"pattern": "(a)\\1"}, "backreferences"),
    ({"severity": "fatal"}, "severity must be one of"),
    ({"fixes": []}, "'fixes' must list at least one fix"),
    ({"fixes": [{"id": "none", "summary": "s", "commands": "sudo reboot"}]}, "must be a list"),
    ({"fixes": [{"id": "none", "summary": "s", "when": ["sometimes"]}]}, "'when' must list conditions"),
    ({"fixes": [{"use": "nothing"}]}, "'use' names no"),
    ({"fixes": [{"id": "sdcard.flash", "summary": "s", "when": ["soc"]}]}, "a reflash erases the board"),
    ({"fixes": [{"id": "sdcard.flash", "summary": "s", "when": ["soc", "image-old"]}]}, "does not erase the board"),
    ({"fix_id": "none"}, "unknown field"),
    ({"cause": ""}, "'cause' must be a non-empty string"),
])
def test_bad_table_rows_are_refused_by_id(row, message):
    good = {"id": "x.y", "pattern": "boom", "severity": "fail", "cause": "c",
            "fixes": [{"id": "none", "summary": "f", "commands": []}], "source": "s"}
    with pytest.raises(SignatureError, match=r"row 1 \(x\.y\).*" + message):
        parse_signatures({"signature": [{**good, **row}]})
    with pytest.raises(SignatureError, match="duplicate id"):
        parse_signatures({"signature": [good, good]})


def test_matcher_scans_plain_iterables():
    matches = Matcher().scan(iter(["ok", "unzip: short read"]))
    assert [(m.line_no, m.signature.id) for m in matches] == [(2, "unzip.short-read")]
