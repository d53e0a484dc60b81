"""The README and the tool agree: every `llmtpu` command line in a README code block is accepted
by the real parser, and the blocks that can run here (sysroot samples) run with a documented
exit code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from llmtpu.cli import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks() -> list[str]:
    """Fenced (```lang) and indented code blocks of the README, in order."""
    blocks: list[str] = []
    fenced: list[str] | None = None
    indented: list[str] = []
    for raw in README.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            if fenced is None:
                fenced = []
            else:
                blocks.append("\n".join(fenced))
                fenced = None
            continue
        if fenced is not None:
            fenced.append(raw)
        elif raw.startswith("    "):
            indented.append(raw)
        elif indented:
            blocks.append("\n".join(indented))
            indented = []
    return blocks


def readme_command_lines() -> list[str]:
    lines = []
    for block in readme_blocks():
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip().split("  #")[0].split(" # ")[0].strip()
            line = re.sub(r"^sudo ", "", line)
            if not line.startswith("llmtpu ") or any(c in line for c in "[]…|<>") or "..." in line:
                continue
            lines.append(line)
    return lines


LINES = readme_command_lines()


def test_the_readme_has_command_lines() -> None:
    assert len(LINES) >= 20


@pytest.mark.parametrize("line", LINES)
def test_every_readme_command_line_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line is refused by llmtpu's parser (exit {exc.code}): {line}")


@pytest.mark.parametrize("line", [line for line in LINES if "--root tests/samples/" in line])
def test_readme_lines_on_the_samples_run(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(README.parent)
    assert main(shlex.split(line)[1:]) in (0, 1, 2)
