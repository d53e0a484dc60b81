"""Drive csrc's llmtpu-engine over its line protocol (protocol 1, described in csrc/README.md).

Two drivers share one reply parser:
- ``run_batch`` sends every request at once through ``Target.run``, so the same call works on
  this machine and over SSH, and a hung chip is the Target's timeout;
- ``EngineSession`` keeps a local engine process open and streams tokens as they come (chat),
  with a deadline on every line it waits for.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmtpu.target import Target, TargetError

PROTOCOL = 1
#: Where `llmtpu engine build` puts the binary in a checkout (build/ is git-ignored).
PACKAGE_DIR = Path(__file__).parent.parent  # the llmtpu package (its csrc is the repository's csrc/)
#: A checkout builds into its own build/; an installed llmtpu into the user's cache.
CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else None
DEFAULT_BUILD_DIR = (CHECKOUT / "build" / "engine" if CHECKOUT else
                     Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmtpu" / "engine")
ENGINE_NAME = "llmtpu-engine"


class EngineError(Exception):
    """The engine failed; ``kind`` says how (the engine's own error kinds plus the driver's).

    Engine kinds: no_runtime, bad_model, device, bad_request. Driver kinds: timeout (no answer
    in time: a hung chip), exited (the process ended without saying why), protocol (a reply
    this driver does not understand), not_built (no binary).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Ready:
    layers: int
    seq: int
    hidden: int
    vocab: int | None  # None when lm_head gives a token id: the vocabulary is not visible
    dtype: str
    load_ms: float
    head: str = "logits"  # "token": lm_head returns the chosen id itself (llm_convert's default)
    layout: str = "llama"  # the layout family: llama (batch-first) or chatglm (sequence-first)

    @property
    def can_sample(self) -> bool:
        """Sampling needs logits; a token head has already chosen (greedily) on the chip."""
        return self.head == "logits"


@dataclass(frozen=True)
class TokenStep:
    token: int
    ms: float  # the first step includes the prefill
    gap: float | None  # top-1 minus top-2 logit; None on a token head (no logits to see)
    nonfinite: int | None  # NaN/inf logits at this step; None on a token head


@dataclass(frozen=True)
class Generation:
    prompt_tokens: int
    steps: tuple[TokenStep, ...]
    reason: str  # length, stop, seq_full
    prefill_ms: float
    decode_ms: float

    @property
    def tokens(self) -> list[int]:
        return [step.token for step in self.steps]

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s over the decode steps (the first token comes from the prefill)."""
        if len(self.steps) < 2 or self.decode_ms <= 0:
            return None
        return (len(self.steps) - 1) * 1000.0 / self.decode_ms

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return self.prompt_tokens * 1000.0 / self.prefill_ms if self.prefill_ms > 0 else None


@dataclass(frozen=True)
class GenerateRequest:
    ids: Sequence[int]
    max_new: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[int] = field(default_factory=tuple)

    def line(self) -> str:
        if not self.ids:
            raise ValueError("a generate request needs at least one prompt token")
        words = [
            "generate",
            "ids=" + ",".join(str(int(i)) for i in self.ids),
            f"max_new={int(self.max_new)}",
            f"temperature={float(self.temperature)!r}",
            f"top_p={float(self.top_p)!r}",
            f"seed={int(self.seed)}",
        ]
        if self.stop:
            words.append("stop=" + ",".join(str(int(i)) for i in self.stop))
        return " ".join(words)


def engine_argv(binary: str, model: str, lib_dir: str | None = None, device: int = 0) -> list[str]:
    argv = [binary, "--model", model, "--device", str(device)]
    if lib_dir:
        argv += ["--lib-dir", lib_dir]
    return argv


def default_build_dir(cross: str | None = None) -> Path:
    """The build folder for this machine's CPU, or for a cross target (``aarch64``).

    One folder per target: CMake keeps the toolchain of a folder's first configure, so a cross
    build in a native folder would quietly build for this machine again.
    """
    return DEFAULT_BUILD_DIR if cross is None else DEFAULT_BUILD_DIR.with_name(f"{DEFAULT_BUILD_DIR.name}-{cross}")


def default_binary() -> Path:
    """$LLMTPU_ENGINE, else the checkout's build/engine/llmtpu-engine."""
    return Path(os.environ.get("LLMTPU_ENGINE") or DEFAULT_BUILD_DIR / ENGINE_NAME)


# -- the reply parser ---------------------------------------------------------------------


def _fields(words: Sequence[str]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in words if "=" in word)


def _number(fields: dict[str, str], key: str, line: str) -> float:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        raise EngineError("protocol", f"engine reply without a number {key}=: {line!r}") from None


def _raise_if_error(line: str) -> None:
    if line.startswith("error "):
        _, kind, *rest = line.split(" ", 2) + [""]
        raise EngineError(kind, rest[0].strip() or line)


def parse_ready(line: str) -> Ready:
    _raise_if_error(line)
    words = line.split()
    if not words or words[0] != "ready":
        raise EngineError("protocol", f"expected the engine's ready line, got {line!r}")
    fields = _fields(words[1:])
    if fields.get("protocol") != str(PROTOCOL):
        raise EngineError("protocol", f"engine speaks protocol {fields.get('protocol')}, "
                                      f"this llmtpu speaks {PROTOCOL}: rebuild it (llmtpu engine build)")
    head = fields.get("head", "logits")
    if head not in ("logits", "token"):
        raise EngineError("protocol", f"engine reports an unknown lm_head kind {head!r}: {line!r}")
    vocab = int(_number(fields, "vocab", line)) if "vocab" in fields else None
    return Ready(
        layers=int(_number(fields, "layers", line)), seq=int(_number(fields, "seq", line)),
        hidden=int(_number(fields, "hidden", line)), vocab=vocab or None,
        dtype=fields.get("dtype", "?"), load_ms=_number(fields, "load_ms", line), head=head,
        layout=fields.get("layout", "llama"),
    )


def read_generation(next_line: Callable[[], str],
                    on_token: Callable[[TokenStep], None] | None = None) -> Generation:
    """Consume the replies to one generate request: prefill, token..., done."""
    line = next_line()
    _raise_if_error(line)
    if not line.startswith("prefill "):
        raise EngineError("protocol", f"expected a prefill line, got {line!r}")
    prompt_tokens = int(_number(_fields(line.split()), "tokens", line))
    steps: list[TokenStep] = []
    while True:
        line = next_line()
        _raise_if_error(line)
        words = line.split()
        if words[:1] == ["token"] and len(words) >= 2:
            fields = _fields(words[2:])
            step = TokenStep(int(words[1]), _number(fields, "ms", line),
                             _number(fields, "gap", line) if "gap" in fields else None,
                             int(_number(fields, "nonfinite", line)) if "nonfinite" in fields else None)
            steps.append(step)
            if on_token:
                on_token(step)
        elif words[:1] == ["done"]:
            fields = _fields(words[1:])
            return Generation(prompt_tokens, tuple(steps), fields.get("reason", "?"),
                              _number(fields, "prefill_ms", line), _number(fields, "decode_ms", line))
        else:
            raise EngineError("protocol", f"unexpected engine reply {line!r}")


def _stderr_tail(text: str, lines: int = 5) -> str:
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)


# -- driver 1: one batch through a Target ------------------------------------------------


def run_batch(target: Target, argv: Sequence[str], requests: Sequence[GenerateRequest],
              timeout: float) -> tuple[Ready, list[Generation]]:
    """Start the engine on the machine, send all requests, read all answers within ``timeout``."""
    stdin = "".join(r.line() + "\n" for r in requests) + "quit\n"
    try:
        result = target.run(argv, timeout=timeout, input=stdin.encode())
    except TargetError as exc:
        raise EngineError("not_built", str(exc)) from exc
    if result.timed_out:
        raise EngineError("timeout", f"the engine gave no complete answer within {timeout:.0f} s "
                                     f"on {target.name} (a hung TPU, or a model too big for the time)")
    lines: Iterator[str] = iter(result.text().splitlines())
    stderr = result.stderr.decode("utf-8", errors="replace")

    def next_line() -> str:
        for line in lines:
            if line.strip():
                return line
        raise EngineError("exited", f"the engine exited with status {result.returncode} before "
                                    f"answering: {_stderr_tail(stderr) or 'no output'}")

    ready = parse_ready(next_line())
    return ready, [read_generation(next_line) for _ in requests]


# -- driver 2: a local session, streaming ------------------------------------------------


class EngineSession:
    """A running local engine: ``start()``, then any number of ``generate()``, then ``close()``."""

    def __init__(self, argv: Sequence[str], load_timeout: float = 120.0) -> None:
        self.argv = list(argv)
        self.load_timeout = load_timeout
        self._stderr = tempfile.TemporaryFile()  # the libraries are chatty; a pipe could fill
        self._buffer = b""
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise EngineError("not_built", f"cannot start {self.argv[0]}: {exc.strerror}; "
                                           f"build it with `llmtpu engine build`") from exc
        self.ready: Ready | None = None

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Ready:
        self.ready = parse_ready(self._read_line(self.load_timeout))
        return self.ready

    def generate(self, request: GenerateRequest, timeout: float,
                 on_token: Callable[[TokenStep], None] | None = None) -> Generation:
        """Send one request; ``timeout`` bounds the wait for each reply line."""
        self._send(request.line())
        return read_generation(lambda: self._read_line(timeout), on_token)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send("quit")
                self._proc.wait(timeout=10)
            except (EngineError, subprocess.TimeoutExpired):
                self._kill()
        self._stderr.close()

    def _send(self, line: str) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._exited() from None

    def _kill(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()

    def _exited(self) -> EngineError:
        code = self._proc.wait()
        self._stderr.seek(0)
        tail = _stderr_tail(self._stderr.read().decode("utf-8", errors="replace"))
        return EngineError("exited", f"the engine exited with status {code}: {tail or 'no output'}")

    def _read_line(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._kill()
                    raise EngineError("timeout", f"the engine gave no answer within {timeout:.0f} s "
                                                 "(a hung TPU, or a model too big for the time)")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise self._exited()
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode("utf-8", errors="replace")
        return text if text.strip() else self._read_line(timeout)
