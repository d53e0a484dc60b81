"""`llmtpu chat` and `llmtpu run`: real tokenizers, templates as data, the tiny model on the cmodel.

The tiny model's tokenizer (runtime/testmodel/tokenizer.json, made by gen/make_tokenizer.py) maps
each of its 256 ids to one printable character, so the reference prompts can be typed as text and
the reference answers must show up as text. The real dfss is never run: a stand-in dfss package
goes first on PYTHONPATH; mirrors are file:// folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llmtpu.provision.mirror import create_manifest
from llmtpu.runtime import testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.runtime.chat import Conversation, StreamPrinter, load_templates, open_model_dir
from llmtpu.runtime.engine import TokenStep
from llmtpu.runtime.tokenizer import load_tokenizer

TOKENIZER = testmodel.HERE / "tokenizer.json"
LLAMA2_FILE = "llama2-7b_int4_1dev.bmodel"  # the table's name for llama2-7b; here it holds the tiny model


def tiny_text(ids: list[int]) -> str:
    return load_tokenizer(TOKENIZER).decode(ids)


def llmtpu(*argv: str, stdin: str = "", env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m llmtpu ...` with piped stdin, as a user's shell would run it."""
    full_env = {k: v for k, v in os.environ.items() if k != "LLMTPU_ENGINE"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "llmtpu", *argv], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# -- tokenizers and templates (no engine) --------------------------------------------------


def test_tiny_tokenizer_is_the_committed_generators_output(tmp_path: Path) -> None:
    from tests.engine.gen import make_tokenizer

    tok = make_tokenizer.build()
    tok.save(str(tmp_path / "t.json"), pretty=True)
    assert (tmp_path / "t.json").read_text() == TOKENIZER.read_text()
    tiny = load_tokenizer(TOKENIZER)
    for case in testmodel.reference_cases():
        for ids in (case.prompt, case.tokens):
            text = tiny.decode(ids)
            assert len(text) == len(ids) and text.isprintable() and tiny.encode(text) == ids
    assert tiny.encode("Hi €") == [72, 105, 32, 63]  # ASCII is itself; unknown -> "?"


def test_sentencepiece_model_encodes_decodes_and_knows_its_control_tokens(tmp_path: Path) -> None:
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the board runs the model", "a hung chip is a timeout", "tokens per second"] * 30))
    sentencepiece.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                             hard_vocab_limit=False, minloglevel=2,
                                             model_type="unigram", bos_id=1, eos_id=2, unk_id=0)
    sp = load_tokenizer(tmp_path / "sp.model")
    ids = sp.encode("the model runs")
    assert ids and 1 not in ids and sp.decode(ids) == "the model runs"  # no BOS added
    assert sp.special_id("<s>") == 1 and sp.special_id("</s>") == 2 and sp.special_id("<|user|>") is None
    conversation = Conversation(load_templates()["llama2"], sp, system_prompt="")
    assert conversation.prompt_ids("the chip")[0] == 1 and conversation.stop_ids == [2]


def test_templates_render_each_family_with_its_special_tokens() -> None:
    tiny = load_tokenizer(TOKENIZER)
    templates = load_templates()
    assert {"plain", "llama2", "chatglm3", "qwen", "qwen1.5", "wizardcoder"} <= set(templates)
    enc = tiny.encode

    qwen = Conversation(templates["qwen"], tiny, system_prompt="S")
    assert qwen.prompt_ids("hi") == [151644, *enc("system\nS"), 151645, *enc("\n"), 151644, *enc("user\nhi"),
                                     151645, *enc("\n"), 151644, *enc("assistant\n")]
    assert qwen.stop_ids == [151645, 151643]

    glm = Conversation(templates["chatglm3"], tiny, system_prompt="")
    glm.remember("a", "b")
    assert glm.prompt_ids("c") == [64790, 64792, 64795, *enc("\n"), *enc("a"), 64796, *enc("\n"), *enc("b"),
                                   64795, *enc("\n"), *enc("c"), 64796]

    llama = Conversation(templates["llama2"], tiny, system_prompt="be {content} brief")
    assert llama.prompt_ids("q {system}") == [
        1, *enc("[INST] <<SYS>>\nbe {content} brief\n<</SYS>>\n\nq {system} [/INST]")]

    plain = Conversation(templates["plain"], tiny)
    plain.remember("ab", "cd")  # no history: every line stands alone
    assert plain.prompt_ids("xy") == enc("xy") and plain.stop_ids == []


def test_stream_printer_waits_for_whole_characters() -> None:
    class Bytes:
        path = Path("bytes")

        def decode(self, ids: list[int]) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    shown: list[str] = []
    printer = StreamPrinter(Bytes(), stop_ids=[0], write=shown.append)  # type: ignore[arg-type]
    for token in "é!".encode() + b"\0":
        printer.token(TokenStep(token, 1.0, 1.0, 0))
    assert shown == ["é", "!"] and printer.finish() == "é!"


# -- model folders and their errors (no engine) --------------------------------------------


def test_missing_model_dir_tokenizer_and_engine_are_one_line_errors(tmp_path: Path) -> None:
    result = llmtpu("chat", "--model", str(tmp_path / "nothing"))
    assert result.returncode == 64 and "is not a folder" in result.stderr and len(result.stderr.splitlines()) == 1

    folder = tmp_path / "llama"
    folder.mkdir()
    shutil.copy(testmodel.bmodel_path(), folder / LLAMA2_FILE)
    result = llmtpu("chat", "--model", str(folder))  # family from the model table, no tokenizer
    assert result.returncode == 64 and len(result.stderr.splitlines()) == 1
    assert "no tokenizer in" in result.stderr and "tokenizer.model (sentencepiece)" in result.stderr

    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    result = llmtpu("chat", "--model", str(folder), "--family", "plain", "--engine", str(tmp_path / "no-engine"))
    assert result.returncode == 2 and "the engine is not built" in result.stderr
    assert "llmtpu engine build" in result.stderr

    shutil.copy(testmodel.bmodel_path("w8bf16"), folder / "other.bmodel")
    result = llmtpu("chat", "--model", str(folder))
    assert result.returncode == 64 and "holds 2 bmodels" in result.stderr

    (folder / "other.bmodel").unlink()
    (folder / LLAMA2_FILE).rename(folder / "mystery.bmodel")
    result = llmtpu("chat", "--model", str(folder))
    assert result.returncode == 64 and "--family" in result.stderr and "llmtpu-model.toml" in result.stderr


def test_the_testmodel_folder_is_a_chat_folder() -> None:
    model = open_model_dir(testmodel.HERE)
    assert (model.bmodel.name, model.tokenizer.name, model.family) == ("tiny_llama_f16.bmodel", "tokenizer.json",
                                                                       "plain")


# -- the tiny model on the cmodel ----------------------------------------------------------


def test_chat_streams_the_reference_answers_through_the_tokenizer(built_engine: BuiltEngine,
                                                                  cmodel_lib: Path) -> None:
    cases = testmodel.reference_cases()
    stdin = "".join(tiny_text(case.prompt) + "\n" for case in cases)  # piped, two messages
    result = llmtpu("chat", "--model", str(testmodel.HERE), "--engine", built_engine.binary,
                    "--lib-dir", str(cmodel_lib), "--max-new", "8", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [tiny_text(case.tokens) for case in cases]
    assert result.stderr.count("tok/s decode") == 2 and "loaded in" in result.stderr


def test_chat_on_a_board_over_ssh_streams_the_same_tokens(built_engine: BuiltEngine, cmodel_lib: Path,
                                                          sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("board")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sshd_farm.known_hosts, home / ".ssh" / "known_hosts")
    shutil.copy(sshd_farm.client_key, home / ".ssh" / "id_ed25519")
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SSH_AUTH_SOCK": ""}
    host = f"{board.user}@127.0.0.1:{board.port}"
    case = testmodel.reference_cases()[0]
    result = llmtpu("chat", "--model", str(testmodel.HERE), "--host", host, "--engine", built_engine.binary,
                    "--lib-dir", str(cmodel_lib), "--max-new", "8", "--json", stdin=tiny_text(case.prompt) + "\n",
                    env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["schema"] == "llmtpu.chat/1" and answer["tokens"] == case.tokens
    assert answer["text"] == tiny_text(case.tokens) and answer["decode_tokens_per_s"] > 0
    assert "loaded in" in result.stderr and "tok/s decode" not in result.stderr  # --json: stats in the JSON

    result = llmtpu("chat", "--model", str(testmodel.HERE), "--host", host, "--engine", "/nowhere/llmtpu-engine",
                    stdin="x\n", env=env)
    assert result.returncode == 2 and "is not on" in result.stderr and "llmtpu engine build" in result.stderr


# -- llmtpu run ------------------------------------------------------------------------------


def test_run_fetches_from_a_file_mirror_builds_the_engine_and_chats(cmodel_lib: Path, tmp_path: Path) -> None:
    require_build_tools()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(testmodel.bmodel_path(), mirror / LLAMA2_FILE)
    create_manifest(str(mirror))
    models = tmp_path / "models"
    case = testmodel.reference_cases()[1]
    result = llmtpu("run", "--model", "llama2-7b", "--models-dir", str(models), "--mirror", mirror.as_uri(),
                    "--tokenizer", str(TOKENIZER), "--family", "plain", "--build-dir", str(tmp_path / "engine"),
                    "--lib-dir", str(cmodel_lib), "--max-new", "8", stdin=tiny_text(case.prompt) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [tiny_text(case.tokens)]
    assert "building the engine" in result.stderr and (tmp_path / "engine" / "llmtpu-engine").is_file()
    folder = models / "llama2-7b"
    assert (folder / LLAMA2_FILE).read_bytes() == testmodel.bmodel_path().read_bytes()
    assert 'family = "llama2"' in (folder / "llmtpu-model.toml").read_text()


DFSS_STANDIN = '''\
"""Stand-in for Sophgo's dfss (never the real one): records argv, writes the tiny model."""
import json, os, shutil, sys
with open(os.environ["DFSS_RECORD"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
shutil.copy(os.environ["DFSS_SOURCE"], sys.argv[1].rsplit("/", 1)[-1])
print("Download completed.")
'''


def test_run_downloads_with_dfss_once_and_asks_for_the_tokenizer_first(tmp_path: Path) -> None:
    package = tmp_path / "standin" / "dfss"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(DFSS_STANDIN)
    record = tmp_path / "dfss.jsonl"
    env = {"PYTHONPATH": str(tmp_path / "standin"), "DFSS_RECORD": str(record),
           "DFSS_SOURCE": str(testmodel.bmodel_path())}
    models = tmp_path / "models"

    result = llmtpu("run", "--model", "llama2-7b", "--models-dir", str(models), env=env)
    assert result.returncode == 64 and "no tokenizer for llama2-7b" in result.stderr
    assert "--tokenizer PATH" in result.stderr and not record.exists()  # nothing downloaded

    no_engine = str(tmp_path / "no-engine")
    args = ["run", "--model", "llama2-7b", "--models-dir", str(models), "--tokenizer", str(TOKENIZER),
            "--engine", no_engine]
    result = llmtpu(*args, env=env)
    assert result.returncode == 2 and "the engine is not built" in result.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [[f"--url=open@sophgo.com:/ext_model_information/LLM/LLM-TPU/{LLAMA2_FILE}"]]
    assert (models / "llama2-7b" / LLAMA2_FILE).is_file()

    result = llmtpu(*args, env=env)  # present: no second download
    assert result.returncode == 2 and len(record.read_text().splitlines()) == 1
    # Issue 14 item 10: afterwards `llmtpu chat --model FOLDER` finds the tokenizer run was given.
    assert (models / "llama2-7b" / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
    result = llmtpu("chat", "--model", str(models / "llama2-7b"), "--engine", no_engine, env=env)
    assert result.returncode == 2 and "the engine is not built" in result.stderr, result.stderr

    result = llmtpu("run", "--model", "gpt-5", "--models-dir", str(models))
    assert result.returncode == 64 and "llama2-7b" in result.stderr


def test_run_records_a_tokenizer_it_cannot_copy(tmp_path: Path) -> None:
    """A different file of the same name stays; the given tokenizer is recorded by path instead."""
    from llmtpu.runtime.chat import read_config, remember_tokenizer

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")  # someone else's file: never overwritten
    (folder / "llmtpu-model.toml").write_text('family = "plain"\ntokenizer = "old.json"\n')
    kept = remember_tokenizer(folder, TOKENIZER)
    assert kept == TOKENIZER.resolve() and (folder / "tokenizer.json").read_text() == "{}"
    assert read_config(folder) == {"family": "plain", "tokenizer": str(TOKENIZER.resolve())}
    shutil.copy(testmodel.bmodel_path(), folder / LLAMA2_FILE)
    assert open_model_dir(folder).tokenizer == TOKENIZER.resolve()
    assert remember_tokenizer(folder, TOKENIZER) == kept  # a second run changes nothing
    assert not list(folder.glob(".*.part"))


def require_build_tools() -> None:
    from tests.conftest import require

    require(shutil.which("cmake") is not None and shutil.which("g++") is not None,
            "cmake and g++ are needed to build the engine (bash .ci/engine-deps.sh installs them)")
