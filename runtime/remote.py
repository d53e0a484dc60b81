"""The engine on another machine, streaming: protocol 1 over one SSH channel.

``run_batch`` through an SSHTarget answers only when the engine has finished; a chat wants each
token as it comes. This opens an exec channel on the SSHTarget's connection (same host-key
checks, same login) and reads its lines with a deadline, like EngineSession does locally. The
remote command is ``echo pid $$; exec ENGINE ...`` so a hung engine can be killed by its pid.
"""

from __future__ import annotations

import select
import shlex
import time
from collections.abc import Callable, Sequence

import paramiko

from llmtpu.runtime.engine import (
    EngineError,
    GenerateRequest,
    Generation,
    Ready,
    TokenStep,
    parse_ready,
    read_generation,
)
from llmtpu.ssh import ERROR, SSHError, SSHTarget

#: Bytes of the engine's stderr kept for error messages (the libraries are chatty).
STDERR_KEEP = 8192


class RemoteEngineSession:
    """A running engine on ``target``: ``start()``, any number of ``generate()``, ``close()``."""

    def __init__(self, target: SSHTarget, argv: Sequence[str], load_timeout: float = 120.0) -> None:
        self.target = target
        self.argv = list(argv)
        self.load_timeout = load_timeout
        self.ready: Ready | None = None
        self._buffer = b""
        self._stderr = b""
        self._pid: str | None = None
        command = "echo pid $$; exec " + shlex.join(self.argv)
        try:
            self._channel = target.open_channel(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHError(ERROR, f"{target.name}: cannot start the engine: {exc}") from exc

    def __enter__(self) -> RemoteEngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Ready:
        first = self._read_line(self.load_timeout)
        if first.startswith("pid "):
            self._pid = first.split()[1]
            first = self._read_line(self.load_timeout)
        self.ready = parse_ready(first)
        return self.ready

    def generate(self, request: GenerateRequest, timeout: float,
                 on_token: Callable[[TokenStep], None] | None = None) -> Generation:
        self._send(request.line())
        return read_generation(lambda: self._read_line(timeout), on_token)

    def close(self) -> None:
        if not self._channel.closed:
            try:
                self._send("quit")
                self._channel.shutdown_write()
                if not self._channel.status_event.wait(10):
                    self._kill()
            except EngineError:
                pass
            self._channel.close()

    def _send(self, line: str) -> None:
        try:
            self._channel.sendall(line.encode() + b"\n")
        except (OSError, EOFError, paramiko.SSHException):
            raise self._exited() from None

    def _kill(self) -> None:
        """Stop a hung engine on the board: closing the channel alone would leave it running."""
        self._channel.close()
        if self._pid and self._pid.isdigit():
            try:
                self.target.run(["kill", "-9", self._pid], timeout=10)
            except SSHError:
                pass

    def _exited(self) -> EngineError:
        status = self._channel.recv_exit_status() if self._channel.status_event.wait(5) else "unknown"
        self._drain_stderr()
        tail = " | ".join([ln for ln in self._stderr.decode("utf-8", "replace").splitlines() if ln.strip()][-5:])
        if status == 127:
            return EngineError("not_built", f"{self.argv[0]} is not on {self.target.name}: build it there "
                                            "(llmtpu engine build) or give its path with --engine")
        return EngineError("exited", f"the engine on {self.target.name} exited with status {status}: "
                                     f"{tail or 'no output'}")

    def _drain_stderr(self) -> None:
        while self._channel.recv_stderr_ready():
            self._stderr = (self._stderr + self._channel.recv_stderr(1 << 16))[-STDERR_KEEP:]

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            self._drain_stderr()  # an unread stderr would stop the channel's flow window
            if self._channel.recv_ready():
                chunk = self._channel.recv(1 << 16)
                if not chunk:
                    raise self._exited()
                self._buffer += chunk
                continue
            if self._channel.eof_received:
                raise self._exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise EngineError("timeout", f"the engine on {self.target.name} gave no answer within "
                                             f"{timeout:.0f} s (a hung TPU, or a model too big for the time)")
            select.select([self._channel], [], [], min(remaining, 1.0))
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode("utf-8", errors="replace")
        return text if text.strip() else self._read_line(timeout)
