"""`llmtpu engine smoke --model M` gives PyTorch's tokens for each architecture, on the cmodel.

runtime/testmodel/ holds tiny random-weight Llama, Qwen2 and ChatGLM3 models, each exported in
the network layout LLM-TPU's compile scripts produce for it and compiled with tpu-mlir by
tests/engine/gen/build.sh, with the fp32 PyTorch model's greedy tokens at safe logit gaps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtpu.cli import Parser, UsageError
from llmtpu.runtime import command, testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.runtime.engine import EngineSession, GenerateRequest, engine_argv

TIMEOUT = 600.0  # one whole generation on a busy 2-core machine


def smoke(*argv: str) -> int:
    parser = Parser(prog="llmtpu")
    command.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    args = parser.parse_args(["engine", "smoke", *argv])
    result: int = args.run(args)
    return result


@pytest.mark.parametrize("family", testmodel.FAMILIES, ids=lambda f: f.name)
def test_engine_smoke_gives_the_reference_tokens(built_engine: BuiltEngine, cmodel_lib: Path,
                                                 family: testmodel.FamilyModel,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert smoke("--model", str(family.bmodel), "--reference", str(family.reference), "--engine",
                 built_engine.binary, "--lib-dir", str(cmodel_lib), "--timeout", str(TIMEOUT)) == 0
    assert capsys.readouterr().out.startswith("ok    engine smoke test: 8 tokens; ")


def test_chatglm_cache_is_right_for_a_second_request(built_engine: BuiltEngine, cmodel_lib: Path) -> None:
    """The right-aligned cache and its spare copy carry nothing wrong from one request to the next."""
    family = next(f for f in testmodel.FAMILIES if f.name == "chatglm3")
    argv = engine_argv(built_engine.binary, str(family.bmodel), str(cmodel_lib))
    with EngineSession(argv, load_timeout=TIMEOUT) as session:
        assert session.start().layout == "chatglm"
        for case in reversed(testmodel.reference_cases(family.reference)):
            generation = session.generate(GenerateRequest(case.prompt, max_new=len(case.tokens)), TIMEOUT)
            assert generation.tokens == case.tokens


def test_smoke_reference_usage_errors(tmp_path: Path) -> None:
    family = testmodel.FAMILIES[0]
    broken = tmp_path / "reference.json"
    broken.write_text('{"cases": []}')
    for argv in (["--model", str(family.bmodel), "--reference", str(broken)],
                 ["--model", str(family.bmodel), "--reference", str(tmp_path / "missing.json")],
                 ["--model", str(family.bmodel), "--reference", str(family.reference), "--prompt", "1"]):
        with pytest.raises(UsageError, match=r"^--(reference|prompt): "):
            smoke(*argv)
