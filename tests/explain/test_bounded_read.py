"""`llmtpu explain` reads bounded lines: a device or a newline-free stream ends with one clear line."""

from __future__ import annotations

import io
import resource
import subprocess
import sys

from tests.explain.cli import run_cli

#: Address space for the child: far below what reading /dev/zero unbounded would take.
CHILD_MEMORY = 1 << 30


def test_a_device_is_refused_before_reading(monkeypatch, capsys):
    assert run_cli(monkeypatch, ["explain", "/dev/zero"]) == 64
    err = capsys.readouterr().err.strip()
    assert "/dev/zero: is a device, not a log" in err and len(err.splitlines()) == 1


def test_a_line_longer_than_the_bound_ends_the_reading(monkeypatch, capsys):
    data = b"ok\n" + b"\0" * (3 << 20)  # no newline after the first line
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert run_cli(monkeypatch, ["explain", "-"]) == 64
    err = capsys.readouterr().err.strip()
    assert "<stdin>: line 2 is longer than 1 MiB" in err and len(err.splitlines()) == 1


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def test_dev_zero_on_stdin_ends_in_bounded_memory(tmp_path):
    """The real command on an endless newline-free stream: exit 64 under a 1 GiB address space."""
    script = ("import sys\nfrom llmtpu import cli\nfrom llmtpu.doctor import explain_command\n"
              "build = cli.build_parser\n"
              "def with_explain():\n"
              "    parser = build()\n"
              "    commands = next(a for a in parser._actions if a.dest == 'command')\n"
              "    if 'explain' not in (commands.choices or {}):\n"
              "        explain_command.add_parser(commands)\n"
              "    return parser\n"
              "cli.build_parser = with_explain\n"
              "raise SystemExit(cli.main(['explain', '-']))\n")
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run([sys.executable, "-c", script], stdin=zero, capture_output=True, timeout=120,
                              preexec_fn=limit_memory, check=False)
    assert done.returncode == 64, done.stderr.decode(errors="replace")
    assert b"line 1 is longer than 1 MiB" in done.stderr
