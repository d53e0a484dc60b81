"""Which bmodel layouts the engine runs and how it refuses the others, judged on listings.

Each file in layouts/ is one case: the networks of a bmodel in the text form the engine's `info`
prints (`net NAME stages=N inputs=name:dtype[dims],... outputs=...`), a `# source:` line naming
the public file its layout comes from, and a `# expect:` line with the engine's exact answer to
`llmtpu-engine --check-layout FILE`. The engine judges a loaded bmodel with the same code, so
these cases test the refusals without compiling a bmodel per layout (ChatGLM, GPT-BigCode,
multi-device and vision bmodels are listed, not built). llama_tiny_f16.txt is what the engine
printed for the committed tiny model, which test_listing_matches_the_loaded_model checks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llmtpu.runtime import testmodel
from llmtpu.runtime.build import BuiltEngine
from llmtpu.runtime.engine import EngineSession, engine_argv

CASES = Path(__file__).parent / "layouts"
TIMEOUT = 300.0


def header(path: Path, key: str) -> str:
    prefix = f"# {key}: "
    lines = [line[len(prefix):] for line in path.read_text().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{path.name} needs one '{prefix}' line"
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES.glob("*.txt")), ids=lambda p: p.stem)
def test_layout_is_run_or_refused_by_name(built_engine: BuiltEngine, case: Path) -> None:
    assert header(case, "source")
    expected = header(case, "expect").replace("LISTING", str(case))
    proc = subprocess.run([built_engine.binary, "--check-layout", str(case)],  # noqa: S603
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.splitlines() == [expected]
    assert proc.returncode == (0 if expected.startswith("layout ") else 4)


def test_broken_listing_is_one_clear_line(built_engine: BuiltEngine, tmp_path: Path) -> None:
    listing = tmp_path / "nets.txt"
    listing.write_text("net embedding inputs=input_ids:i32[1,64]\nnet lm_head inputs=x:q4[1] outputs=\n")
    proc = subprocess.run([built_engine.binary, "--check-layout", str(listing)],  # noqa: S603
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4
    assert proc.stdout == (f"error bad_model {listing} line 1 is not `net NAME [stages=N] "
                           "inputs=name:dtype[dims],... outputs=...`\n")


#: The listing of each committed tiny model, as the engine printed it.
LISTINGS = {"llama": "llama_tiny_f16.txt", "qwen2": "qwen2_tiny_bf16.txt", "chatglm3": "chatglm3_tiny_f16.txt",
            "gpt_bigcode": "gpt_bigcode_tiny_f16.txt"}


@pytest.mark.parametrize("family", testmodel.FAMILIES, ids=lambda f: f.name)
def test_listing_matches_the_loaded_model(built_engine: BuiltEngine, cmodel_lib: Path,
                                          family: testmodel.FamilyModel) -> None:
    """The committed listings are what the engine sees in the real bmodels, so the cases are real."""
    listing = CASES / LISTINGS[family.name]
    committed = [line for line in listing.read_text().splitlines() if line.startswith("net ")]
    argv = engine_argv(built_engine.binary, str(family.bmodel), str(cmodel_lib))
    proc = subprocess.run(argv, input="info\nquit\n", capture_output=True, text=True,  # noqa: S603
                          timeout=TIMEOUT)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready protocol=1 " + header(listing, "expect").removeprefix("layout ") + " ")
    assert lines[1:] == [*committed, "end"]
    with EngineSession(argv, load_timeout=TIMEOUT) as session:
        ready = session.start()
        token_head = family.name == "gpt_bigcode"  # WizardCoder's lm_head ends in TopK
        assert (ready.layout, ready.can_sample) == (family.layout, not token_head)
        assert ready.vocab == (None if token_head else 256)
