"""The real `llmtpu` command in a subprocess: exit codes, JSON contract, usage errors, golden output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtpu import __version__

SAMPLES = Path(__file__).parent / "samples"
GOLDEN = Path(__file__).parent / "golden"


def llmtpu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtpu", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def normalized(document: dict) -> dict:
    """Drop what depends on the machine running the test (host name, folder, free disk)."""
    document = dict(document, host="<host>", root="<root>")
    for check in document["checks"]:
        if check["id"] == "disk.models":
            check["summary"] = "<free space>"
            check["evidence"] = []
    return document


def test_version() -> None:
    result = llmtpu("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"llmtpu {__version__}"


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()))
def test_json_matches_golden(sample: str) -> None:
    result = llmtpu("doctor", "--root", str(SAMPLES / sample), "--json")
    document = json.loads(result.stdout)  # nothing but JSON on stdout
    assert document["schema"] == "llmtpu.doctor/1" and document["tool_version"] == __version__
    assert result.returncode == {"ok": 0, "warn": 1, "fail": 2}[document["verdict"]]
    golden = GOLDEN / f"{sample}.json"
    if os.environ.get("LLMTPU_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(normalized(document), indent=2, ensure_ascii=False) + "\n")
    assert normalized(document) == json.loads(golden.read_text())


def test_exit_codes_are_distinct() -> None:
    assert llmtpu("doctor", "--root", str(SAMPLES / "soc-board-ok"), "--only", "kernel.date").returncode == 0
    assert llmtpu("doctor", "--root", str(SAMPLES / "soc-board-downclocked"), "--only", "tpu.clocks").returncode == 1
    assert llmtpu("doctor", "--root", str(SAMPLES / "pcie-host-old-driver"), "--only", "driver.date").returncode == 2
    assert llmtpu("doctor", "--bogus").returncode == 64


def test_human_output_has_table_and_verdict() -> None:
    result = llmtpu("doctor", "--root", str(SAMPLES / "pcie-host-old-driver"))
    assert "driver.date" in result.stdout and "fail" in result.stdout
    assert "python3 -m dfss --url=open@sophgo.com:" in result.stdout
    assert "verdict: fail" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["doctor", "--root", "/no/such/dir"], "--root: /no/such/dir does not exist"),
    (["doctor", "--root", __file__], "is not a folder"),
    (["doctor", "--only", "nope"], "unknown check nope"),
    (["doctor", "--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["doctor", "--models-dir", "relative"], "must be an absolute path"),
])
def test_usage_errors_are_one_line(args: list[str], fragment: str) -> None:
    result = llmtpu(*args)
    assert result.returncode == 64
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("llmtpu: error:")


def test_this_machine_has_no_device_and_says_so() -> None:
    """The newcomer's first run on a chip-less machine: a clear fail with what to do."""
    result = llmtpu("doctor", "--json")
    document = json.loads(result.stdout)
    kind = next(c for c in document["checks"] if c["id"] == "machine.kind")
    if document["machine_kind"] == "none":
        assert result.returncode == 2 and kind["status"] == "fail" and kind["fix"]["commands"]
        assert all(c["status"] == "skip" for c in document["checks"] if c["id"] != "machine.kind")


def test_list_checks_and_models() -> None:
    checks = llmtpu("doctor", "--list-checks")
    assert checks.returncode == 0 and "driver.date" in checks.stdout
    models = llmtpu("doctor", "--list-models")
    assert models.returncode == 0 and "llama2-7b" in models.stdout


def test_models_fit_the_machine() -> None:
    small = json.loads(llmtpu("models", "--root", str(SAMPLES / "soc-board-old-kernel"), "--json").stdout)
    fits = {m["name"]: m["fits"] for m in small["models"]}
    assert small["device_memory_mib"] == 3950 and fits["llama2-7b"] is False and fits["qwen1.5-1.8b"] is True
    card = json.loads(llmtpu("models", "--root", str(SAMPLES / "pcie-host-ok"), "--json").stdout)
    assert card["source"] == "card heap0" and all(m["fits"] for m in card["models"] if m["npu_mib"] <= 10752)
    nothing = json.loads(llmtpu("models", "--root", str(SAMPLES / "pcie-docker-no-libsophon"), "--json").stdout)
    assert nothing["device_memory_mib"] == 10752
