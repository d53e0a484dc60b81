"""Run `llmtpu` with the explain and report sub-commands added (the lead registers them in cli.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmtpu import cli
from llmtpu.doctor import explain_command, support_report_command


def run_cli(monkeypatch: pytest.MonkeyPatch, argv: Sequence[str]) -> int:
    build = cli.build_parser

    def with_ours():
        parser = build()
        commands = next(a for a in parser._actions if a.dest == "command")
        known = getattr(commands, "choices", {}) or {}
        if "explain" not in known:
            explain_command.add_parser(commands)
        if "report" not in known:
            support_report_command.add_parser(commands)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_ours)
    return cli.main(list(argv))
