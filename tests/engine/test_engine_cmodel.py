"""The real engine, built with cmake, on the BM1684X cmodel: exact tokens and broken inputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llmtpu.runtime import testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.runtime.engine import (
    EngineError,
    EngineSession,
    GenerateRequest,
    TokenStep,
    engine_argv,
)
from llmtpu.runtime.smoke import DOWNCLOCK_FIX, FIX_BY_ENGINE_ERROR, smoke_test
from llmtpu.target import LocalTarget

GENERATOR = Path(__file__).parent / "gen" / "build.sh"
#: Generous: the cmodel takes 5-30 s for a whole run on a busy 2-core machine.
TIMEOUT = 300.0


def test_built_engine_reports_version_without_bmruntime(built_engine: BuiltEngine) -> None:
    assert built_engine.version.startswith("llmtpu-engine ")
    assert "protocol=1" in built_engine.version


def test_missing_library_path_is_one_clear_error(built_engine: BuiltEngine, tmp_path: Path) -> None:
    argv = engine_argv(built_engine.binary, str(testmodel.bmodel_path()), lib_dir=str(tmp_path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, input="")  # noqa: S603
    assert proc.returncode == 3
    assert proc.stdout.startswith(f"error no_runtime bmruntime not found in {tmp_path}")
    assert proc.stdout.count("\n") == 1

    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 4, TIMEOUT)
    assert (result.ok, result.problem) == (False, "no_runtime")
    assert result.fix == FIX_BY_ENGINE_ERROR["no_runtime"]


@pytest.mark.parametrize("mode", testmodel.MODES)
def test_tiny_model_gives_reference_tokens(built_engine: BuiltEngine, cmodel_lib: Path,
                                           mode: str) -> None:
    argv = engine_argv(built_engine.binary, str(testmodel.bmodel_path(mode)), str(cmodel_lib))
    with EngineSession(argv, load_timeout=TIMEOUT) as session:
        ready = session.start()
        assert (ready.layers, ready.seq, ready.vocab) == (2, 64, 256)
        for case in testmodel.reference_cases():
            streamed: list[TokenStep] = []
            generation = session.generate(
                GenerateRequest(case.prompt, max_new=len(case.tokens)), TIMEOUT, streamed.append)
            assert generation.tokens == case.tokens, f"{mode} prompt {case.prompt}"
            assert [step.token for step in streamed] == case.tokens
            assert generation.reason == "length"
            assert all(step.nonfinite == 0 for step in generation.steps)
            assert generation.prefill_ms > 0 and generation.decode_tokens_per_s


def test_sampling_stop_and_bad_requests(built_engine: BuiltEngine, cmodel_lib: Path) -> None:
    case = testmodel.reference_cases()[1]
    argv = engine_argv(built_engine.binary, str(testmodel.bmodel_path("f16")), str(cmodel_lib))
    with EngineSession(argv, load_timeout=TIMEOUT) as session:
        ready = session.start()
        with pytest.raises(EngineError) as too_long:
            session.generate(GenerateRequest(list(range(1, ready.seq + 2)), max_new=2), TIMEOUT)
        assert too_long.value.kind == "bad_request"
        with pytest.raises(EngineError) as out_of_vocab:
            session.generate(GenerateRequest([ready.vocab], max_new=2), TIMEOUT)
        assert out_of_vocab.value.kind == "bad_request"

        # A nucleus this small keeps only the top token: sampling then equals greedy.
        narrow = session.generate(
            GenerateRequest(case.prompt, max_new=4, temperature=1.0, top_p=1e-6, seed=5), TIMEOUT)
        assert narrow.tokens == case.tokens[:4]
        # The same seed gives the same sample; stop ends generation at the stop token.
        hot = GenerateRequest(case.prompt, max_new=4, temperature=1.5, top_p=0.95, seed=11)
        first, second = session.generate(hot, TIMEOUT), session.generate(hot, TIMEOUT)
        assert first.tokens == second.tokens
        assert all(0 <= t < ready.vocab for t in first.tokens)
        stopped = session.generate(GenerateRequest(case.prompt, max_new=8, stop=[case.tokens[1]]),
                                   TIMEOUT)
        assert (stopped.tokens, stopped.reason) == (case.tokens[:2], "stop")


def test_corrupted_bmodel_fails_as_bad_model(built_engine: BuiltEngine, cmodel_lib: Path,
                                             tmp_path: Path) -> None:
    data = bytearray(testmodel.bmodel_path("f16").read_bytes())
    truncated = tmp_path / "truncated.bmodel"
    truncated.write_bytes(data[: len(data) // 2])
    for i in range(64, len(data), 97):  # bmruntime crashes on this one; the engine still answers
        data[i] ^= 0xFF
    flipped = tmp_path / "flipped.bmodel"
    flipped.write_bytes(data)
    for broken in (truncated, flipped):
        argv = engine_argv(built_engine.binary, str(broken), str(cmodel_lib))
        result = smoke_test(LocalTarget(), argv, [1, 2, 3], 4, TIMEOUT)
        assert (result.ok, result.problem) == (False, "bad_model"), result.message
        assert str(broken) in result.message
        assert "download it again" in result.fix


def test_smoke_passes_on_tiny_model(built_engine: BuiltEngine, cmodel_lib: Path) -> None:
    case = testmodel.reference_cases()[0]
    argv = engine_argv(built_engine.binary, str(testmodel.bmodel_path("w8bf16")), str(cmodel_lib))
    result = smoke_test(LocalTarget(), argv, case.prompt, len(case.tokens), TIMEOUT,
                        expected=case.tokens)
    assert result.ok, result.message
    assert result.generation is not None and result.generation.tokens == case.tokens
    assert "tok/s" in result.message
    assert result.fix == ""

    wrong = smoke_test(LocalTarget(), argv, case.prompt, 2, TIMEOUT, expected=[0, 0])
    assert (wrong.ok, wrong.problem, wrong.fix) == (False, "mismatch", DOWNCLOCK_FIX)


def test_rebuilt_model_gives_committed_tokens(built_engine: BuiltEngine, cmodel_lib: Path,
                                              tmp_path: Path) -> None:
    """Opt-in (about 1-2 min, 1.5 GB of toolchain): the generator still makes the committed model."""
    if os.environ.get("LLMTPU_TESTMODEL_REBUILD") != "1":
        pytest.skip("set LLMTPU_TESTMODEL_REBUILD=1 to rebuild the tiny model with torch + tpu-mlir")
    subprocess.run(["bash", str(GENERATOR), str(tmp_path)], check=True, timeout=1800)  # noqa: S603, S607
    for family in testmodel.FAMILIES:
        rebuilt = json.loads((tmp_path / family.reference.name).read_text())
        committed = json.loads(family.reference.read_text())
        assert rebuilt["cases"] == committed["cases"], family.name
    case = testmodel.reference_cases()[0]
    argv = engine_argv(built_engine.binary, str(tmp_path / "tiny_llama_f16.bmodel"), str(cmodel_lib))
    result = smoke_test(LocalTarget(), argv, case.prompt, len(case.tokens), TIMEOUT, case.tokens)
    assert result.ok, result.message
