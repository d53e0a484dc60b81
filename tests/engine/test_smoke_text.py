"""The smoke check judges the decoded text, and tells a terminal what it is waiting for.

LLM-TPU FAQ Q3 (seed README, "### Q3：推理出来精度异常，输出全是“！”": the output is all "!" when
the TPU voltage is too low for its clock). A tokenizer may give "!" many ids, or pair it with
other punctuation ('!"!"'), so the check reads the text, not the ids.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from llmtpu.runtime.engine import Generation, TokenStep
from llmtpu.runtime.smoke import DOWNCLOCK_FIX, degenerate_reason, punctuation_only, smoke_test
from llmtpu.target import LocalTarget

READY = "ready protocol=1 layers=2 seq=64 hidden=64 head=logits vocab=256 dtype=f16 load_ms=5.0"


def stand_in(tmp_path: Path, tokens: list[int]) -> list[str]:
    lines = [READY, "prefill ms=10.0 tokens=3"]
    lines += [f"token {t} ms=5.0 gap=1.0 nonfinite=0" for t in tokens]
    lines.append(f"done tokens={len(tokens)} reason=length prefill_ms=10.0 decode_ms=20.0")
    script = tmp_path / "engine.py"
    script.write_text("import sys\n" + "".join(f"print({line!r}, flush=True)\n" for line in lines[:1])
                      + "sys.stdin.readline()\n"
                      + "".join(f"print({line!r}, flush=True)\n" for line in lines[1:]))
    return [sys.executable, str(script)]


#: A tokenizer stand-in: ids 33/34 are "!" and '"', 35 is "？" (full width), 40+ are letters.
PIECES = {33: "!", 34: '"', 35: "？", 36: " ", 40: "Hel", 41: "lo", 42: ","}


def decode(ids: Sequence[int]) -> str:
    return "".join(PIECES.get(i, "") for i in ids)


@pytest.mark.parametrize(("text", "garbage"), [
    ("!!!!!!!!", True), ('!"!"!"!"', True), ("！！！！", True), ("？？ ？？", True), ("!!! !!!\n", True),
    ("Hello, world!", False), ("42!", False), ("", False), ("   ", False), ("好的！", False),
])
def test_punctuation_only(text: str, garbage: bool) -> None:
    assert punctuation_only(text) is garbage


def test_alternating_bang_quote_is_degenerate_by_text(tmp_path: Path) -> None:
    tokens = [33, 34, 33, 34, 33, 34, 33, 34]  # two ids: no single token repeated
    argv = stand_in(tmp_path, tokens)
    assert smoke_test(LocalTarget(), argv, [1, 2, 3], 8, timeout=30).ok  # ids alone pass
    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 8, timeout=30, decode=decode)
    assert (result.ok, result.problem, result.fix) == (False, "degenerate", DOWNCLOCK_FIX)
    assert result.message == ("degenerate output: the output is only punctuation: "
                              "'!\"!\"!\"!\"' (8 tokens, LLM-TPU FAQ Q3)")


def test_words_pass_and_empty_text_fails(tmp_path: Path) -> None:
    good = smoke_test(LocalTarget(), stand_in(tmp_path, [40, 41, 42, 36, 40, 41, 33]), [1], 7,
                      timeout=30, decode=decode)
    assert good.ok, good.message
    steps = tuple(TokenStep(t, 1.0, 1.0, 0) for t in (90, 91, 92, 93))
    assert degenerate_reason(Generation(1, steps, "length", 1.0, 1.0), text="") == \
        "4 tokens decode to no visible text"


def test_progress_names_each_phase(tmp_path: Path) -> None:
    heard: list[str] = []
    result = smoke_test(LocalTarget(), stand_in(tmp_path, [40, 41, 42]), [1, 2, 3], 3, timeout=30,
                        progress=heard.append)
    assert result.ok, result.message
    assert heard == ["loading the model", "loaded in 5 ms; prefill of 3 tokens",
                     "decode: token 1 of 3", "decode: token 2 of 3", "decode: token 3 of 3"]


def test_cli_smoke_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """Issue 14 item 11: `engine smoke` printed nothing until done; on a terminal it now says what it waits for."""
    import os
    import pty
    import subprocess

    script = tmp_path / "slow_engine.py"
    lines = [READY, "prefill ms=10.0 tokens=3"] + [f"token {40 + i} ms=5.0 gap=1.0 nonfinite=0" for i in range(3)]
    script.write_text(f"import sys, time\ntime.sleep(0.6)\nprint({READY!r}, flush=True)\nsys.stdin.readline()\n"
                      + "".join(f"time.sleep(0.6)\nprint({line!r}, flush=True)\n" for line in lines[1:])
                      + "print('done tokens=3 reason=length prefill_ms=10.0 decode_ms=20.0', flush=True)\n")
    engine = tmp_path / "engine"
    engine.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    engine.chmod(0o755)
    argv = [sys.executable, "-m", "llmtpu", "engine", "smoke", "--engine", str(engine), "--model",
            str(tmp_path / "m.bmodel"), "--prompt", "1,2,3", "--max-new", "3", "--timeout", "60"]
    (tmp_path / "m.bmodel").write_bytes(b"stand-in")
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}

    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)  # noqa: S603
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, env=env)  # noqa: S603
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    assert proc.stdout is not None and proc.stdout.read().startswith(b"ok    engine smoke test: 3 tokens")
    os.close(controller)
    text = seen.decode("utf-8", errors="replace")
    assert "engine smoke test: loading the model" in text
    assert "prefill of 3 tokens" in text and "decode: token" in text
