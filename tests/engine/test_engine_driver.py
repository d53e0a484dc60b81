"""The Python driver and the smoke judgement against stand-in engines (no chip, no cmodel).

A stand-in is a small script that speaks the engine's line protocol (or deliberately does not),
run for real through the same drivers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from llmtpu.clikit import Parser, UsageError
from llmtpu.runtime import command, testmodel
from llmtpu.runtime.engine import (
    EngineError,
    EngineSession,
    GenerateRequest,
    Generation,
    TokenStep,
    parse_ready,
)
from llmtpu.runtime.smoke import DOWNCLOCK_FIX, HUNG_FIX, degenerate_reason, smoke_test
from llmtpu.target import LocalTarget

READY = "ready protocol=1 layers=2 seq=64 hidden=64 vocab=256 dtype=f16 load_ms=5.0"


def stand_in(tmp_path: Path, body: str) -> list[str]:
    """An executable stand-in engine whose behaviour is the Python ``body``."""
    script = tmp_path / "stand_in_engine.py"
    script.write_text("import sys, time\n" + body)
    return [sys.executable, str(script)]


def answering(tokens: list[int], nonfinite: int = 0) -> str:
    lines = [READY, "prefill ms=10.0 tokens=3"]
    lines += [f"token {t} ms=5.0 gap=1.0 nonfinite={nonfinite}" for t in tokens]
    lines.append(f"done tokens={len(tokens)} reason=length prefill_ms=10.0 decode_ms=20.0")
    return f"sys.stdin.readline()\nprint({chr(10).join(lines)!r}, flush=True)\n"


def generation(tokens: list[int], nonfinite: int = 0) -> Generation:
    steps = tuple(TokenStep(t, 1.0, 1.0, nonfinite) for t in tokens)
    return Generation(3, steps, "length", 10.0, 20.0)


def test_engine_that_never_answers_is_a_timeout(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, "time.sleep(600)\n")
    started = time.monotonic()
    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 4, timeout=2.0)
    assert (result.ok, result.problem, result.fix) == (False, "timeout", HUNG_FIX)
    assert "no complete answer within 2 s" in result.message
    assert time.monotonic() - started < 30

    with pytest.raises(EngineError) as hung, EngineSession(argv, load_timeout=1.0) as session:
        session.start()
    assert hung.value.kind == "timeout"


def test_engine_that_hangs_mid_generation_is_a_timeout(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, f"print({READY!r}, flush=True)\nsys.stdin.readline()\n"
                              "print('prefill ms=1 tokens=3', flush=True)\ntime.sleep(600)\n")
    with EngineSession(argv) as session:
        session.start()
        with pytest.raises(EngineError) as hung:
            session.generate(GenerateRequest([1, 2, 3]), timeout=1.0)
    assert hung.value.kind == "timeout"


def test_bang_run_and_repeats_are_degenerate(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, answering([0, 0, 0, 0, 0, 0]))
    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 6, timeout=30)
    assert (result.ok, result.problem, result.fix) == (False, "degenerate", DOWNCLOCK_FIX)
    assert "repeated 6 times" in result.message

    assert degenerate_reason(generation([3, 4, 5, 6]), bang_ids={3, 4, 5, 6}) is not None
    assert "FAQ Q3" in str(degenerate_reason(generation([3, 3, 4]), bang_ids={3, 4}))
    assert "NaN/inf" in str(degenerate_reason(generation([7, 8, 9], nonfinite=2)))
    assert degenerate_reason(generation([5, 5, 5])) is None  # too short to call a repetition
    assert degenerate_reason(generation([5, 6, 5, 6])) is None


def test_nonfinite_logits_fail_the_smoke_test(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, answering([10, 11, 12], nonfinite=256))
    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 3, timeout=30)
    assert (result.problem, result.fix) == ("degenerate", DOWNCLOCK_FIX)
    assert "NaN/inf logits at step 0" in result.message


def test_engine_that_dies_is_reported_with_its_stderr(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, "sys.stderr.write('bm_dev_request failed: no device\\n')\n"
                              "sys.exit(5)\n")
    result = smoke_test(LocalTarget(), argv, [1, 2, 3], 3, timeout=30)
    assert result.problem == "exited"
    assert "status 5" in result.message and "no device" in result.message


def test_missing_engine_binary_says_build_it(tmp_path: Path) -> None:
    result = smoke_test(LocalTarget(), [str(tmp_path / "nope")], [1], 1, timeout=5)
    assert (result.problem, result.fix) == ("not_built", "build the engine on this machine: "
                                                         "llmtpu engine build")


def test_ready_line_parsing() -> None:
    assert parse_ready(READY).layers == 2
    with pytest.raises(EngineError) as other:
        parse_ready(READY.replace("protocol=1", "protocol=9"))
    assert other.value.kind == "protocol"
    with pytest.raises(EngineError) as error:
        parse_ready("error bad_model cannot read x.bmodel: No such file")
    assert (error.value.kind, str(error.value)) == ("bad_model", "cannot read x.bmodel: No such file")


def test_request_line() -> None:
    line = GenerateRequest([1, 2], max_new=3, temperature=0.5, top_p=0.9, seed=4, stop=[7]).line()
    assert line == "generate ids=1,2 max_new=3 temperature=0.5 top_p=0.9 seed=4 stop=7"
    with pytest.raises(ValueError):
        GenerateRequest([]).line()


def test_cli_smoke_with_stand_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = testmodel.reference_cases()[0]
    script = tmp_path / "engine"
    script.write_text(f"#!{sys.executable}\nimport sys\n" + answering(case.tokens))
    script.chmod(0o755)

    parser = Parser(prog="llmtpu")
    command.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    args = parser.parse_args(["engine", "smoke", "--engine", str(script), "--timeout", "30"])
    assert args.run(args) == 0
    assert capsys.readouterr().out.startswith("ok    engine smoke test: 8 tokens; load 5 ms")

    args = parser.parse_args(["engine", "smoke", "--engine", str(tmp_path / "missing")])
    assert args.run(args) == 2
    assert "fix: build the engine" in capsys.readouterr().out


def test_cli_usage_errors(tmp_path: Path) -> None:
    parser = Parser(prog="llmtpu")
    command.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    for argv in (["engine", "smoke", "--model", str(tmp_path / "x.bmodel"), "--prompt", "1"],
                 ["engine", "smoke", "--model", str(tmp_path)],
                 ["engine", "build", "--source", str(tmp_path)]):
        args = parser.parse_args(argv)
        with pytest.raises(UsageError):
            args.run(args)
