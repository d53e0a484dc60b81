"""A bmodel whose lm_head returns a token id (llm_convert's default) on the cmodel.

Greedy decoding is right (the chip did the argmax); sampling is refused with a message that
says why, never run on a fake distribution; gap, nonfinite and vocab are not reported because
the engine cannot see them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from llmtpu.clikit import UsageError
from llmtpu.runtime import command, testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.runtime.chat import open_model_dir
from llmtpu.runtime.engine import EngineError, EngineSession, GenerateRequest, engine_argv

TIMEOUT = 300.0
REFUSAL = ("this bmodel's lm_head returns a token id, not logits (llm_convert without --do_sample), "
           "so it cannot sample: use temperature=0, or a bmodel converted with --do_sample")


def test_token_head_decodes_greedily_and_refuses_sampling(built_engine: BuiltEngine,
                                                          cmodel_lib: Path) -> None:
    case = testmodel.reference_cases()[0]
    argv = engine_argv(built_engine.binary, str(testmodel.bmodel_path(testmodel.TOKEN_HEAD_MODE)),
                       str(cmodel_lib))
    with EngineSession(argv, load_timeout=TIMEOUT) as session:
        ready = session.start()
        assert (ready.head, ready.vocab, ready.can_sample) == ("token", None, False)
        generation = session.generate(GenerateRequest(case.prompt, max_new=len(case.tokens)), TIMEOUT)
        assert generation.tokens == case.tokens
        assert all(step.gap is None and step.nonfinite is None for step in generation.steps)
        with pytest.raises(EngineError) as refused:
            session.generate(GenerateRequest(case.prompt, max_new=4, temperature=0.8, seed=3), TIMEOUT)
        assert (refused.value.kind, str(refused.value)) == ("bad_request", REFUSAL)


def test_chat_refuses_temperature_on_a_token_head(built_engine: BuiltEngine, cmodel_lib: Path,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tiny.bmodel").write_bytes(testmodel.bmodel_path(testmodel.TOKEN_HEAD_MODE).read_bytes())
    (folder / "tokenizer.json").write_bytes((testmodel.HERE / "tokenizer.json").read_bytes())
    model = open_model_dir(folder, None, "plain")
    args = argparse.Namespace(engine=built_engine.binary, lib_dir=str(cmodel_lib), device=0, system=None,
                              max_new=4, temperature=0.7, top_p=1.0, seed=0, load_timeout=TIMEOUT,
                              timeout=TIMEOUT, json=False)
    with pytest.raises(UsageError, match=r"--temperature: tiny.bmodel's lm_head returns a token id"):
        command.chat_with(args, model)
