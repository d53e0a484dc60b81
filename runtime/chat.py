"""`llmtpu chat`'s core: a model folder, its chat template, and the turn-by-turn loop.

A model folder holds one LLM-TPU bmodel and its tokenizer (tokenizer.json or a sentencepiece
.model), and optionally ``llmtpu-model.toml`` (family, bmodel, tokenizer, system_prompt). The
family picks a template from templates.toml; without a config it comes from the model table
(doctor/models.toml) by the bmodel's file name. Tokens are printed as the engine sends them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from llmtpu.data import load_toml, tomllib
from llmtpu.runtime.engine import GenerateRequest, Generation, Ready, TokenStep
from llmtpu.runtime.tokenizer import Tokenizer, TokenizerError, find_tokenizer

CONFIG_NAME = "llmtpu-model.toml"
#: Typed alone on a line: end the chat, or forget the conversation so far.
QUIT_WORDS = ("/exit", "/quit")
CLEAR_WORD = "/clear"
PLACEHOLDER = re.compile(r"\{(system|content)\}")


class ChatSetupError(Exception):
    """The model folder cannot be chatted with; the message says what is missing."""


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    prefix: tuple[str, ...] = ()
    system: tuple[str, ...] = ()
    first_user: tuple[str, ...] = ()
    user: tuple[str, ...] = ("{content}",)
    assistant: tuple[str, ...] = ("{content}",)
    generation: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    special: dict[str, int] = field(default_factory=dict)
    system_prompt: str = ""
    history: bool = True
    tokenizer: str = "tokenizer.json or a sentencepiece .model"


def load_templates() -> dict[str, Template]:
    table = load_toml("llmtpu.runtime", "templates.toml")
    templates = {}
    for name, row in table.items():
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        templates[name] = Template(name=name, **values)
    return templates


@dataclass(frozen=True)
class ModelDir:
    folder: Path
    bmodel: Path
    tokenizer: Path
    family: str
    system_prompt: str | None  # None: the template's


def _family_from_table(bmodel: Path) -> str | None:
    from llmtpu.doctor.checks import load_models

    for model in load_models().values():
        if model.file.rsplit("/", 1)[-1] == bmodel.name:
            return model.family
    return None


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ChatSetupError(f"{path}: not valid TOML ({exc})") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a new file beside ``path`` (never through a link) and rename it over ``path``."""
    part = path.with_name(f".{path.name}.part")
    if os.path.lexists(part):
        part.unlink()
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(part, path)


def remember_tokenizer(folder: Path, tokenizer: Path) -> Path:
    """Make ``tokenizer`` the folder's own, so a later `llmtpu chat --model FOLDER` finds it.

    A tokenizer file is copied into the folder (never over a different file of the same name);
    otherwise, and when the copy is not the one the folder would be searched for, its path is
    recorded as ``tokenizer = "..."`` in the folder's llmtpu-model.toml. Returns what chat will use.
    """
    chosen = tokenizer.resolve()
    if tokenizer.is_file():
        copy = folder / tokenizer.name
        if not os.path.lexists(copy):
            _write_atomically(copy, tokenizer.read_bytes())
        if copy.is_file() and not copy.is_symlink() and copy.read_bytes() == tokenizer.read_bytes():
            chosen = copy
    config = read_config(folder)
    recorded = config.get("tokenizer")
    if recorded is not None and (folder / str(recorded)).resolve() == chosen.resolve():
        return chosen
    if recorded is None and find_tokenizer(folder) == chosen:
        return chosen
    path = folder / CONFIG_NAME
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if not line.replace(" ", "").startswith("tokenizer=")]
    name = chosen.name if chosen.parent == folder else str(chosen)
    lines.append(f"tokenizer = {json.dumps(name)}")
    _write_atomically(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return chosen


def open_model_dir(folder: Path, tokenizer: Path | None = None, family: str | None = None) -> ModelDir:
    """Find the bmodel, tokenizer and family of a model folder, or say what is missing."""
    if not folder.is_dir():
        raise ChatSetupError(f"--model: {folder} is not a folder; give the folder holding the bmodel and tokenizer")
    config = read_config(folder)
    if "bmodel" in config:
        bmodel = folder / str(config["bmodel"])
        if not bmodel.is_file():
            raise ChatSetupError(f"{folder / CONFIG_NAME} names bmodel {config['bmodel']!r}, which is not in {folder}")
    else:
        found = sorted(folder.glob("*.bmodel"))
        if not found:
            raise ChatSetupError(f"{folder} holds no .bmodel (llmtpu run --model NAME downloads one)")
        if len(found) > 1:
            raise ChatSetupError(f"{folder} holds {len(found)} bmodels ({', '.join(p.name for p in found)}): "
                                 f"name one with bmodel = \"...\" in {CONFIG_NAME}")
        bmodel = found[0]
    family = family or config.get("family") or _family_from_table(bmodel)
    templates = load_templates()
    if family is None:
        raise ChatSetupError(f"cannot tell {bmodel.name}'s chat format: give --family ({', '.join(templates)}) "
                             f"or write family = \"...\" in {folder / CONFIG_NAME}")
    if family not in templates:
        raise ChatSetupError(f"no chat template for family {family!r}; there are {', '.join(templates)} "
                             "(runtime/templates.toml)")
    if tokenizer is None and "tokenizer" in config:
        tokenizer = folder / str(config["tokenizer"])
    if tokenizer is None:
        tokenizer = find_tokenizer(folder)
    if tokenizer is None:
        raise ChatSetupError(f"no tokenizer in {folder}: {family} needs {templates[family].tokenizer}; "
                             "copy it there or give --tokenizer PATH")
    if not tokenizer.exists():
        raise ChatSetupError(f"--tokenizer: {tokenizer} does not exist")
    prompt = config.get("system_prompt")
    return ModelDir(folder, bmodel, tokenizer, family, str(prompt) if prompt is not None else None)


class Conversation:
    """The turns so far, rendered to ids with a template; answers are kept when it has history."""

    def __init__(self, template: Template, tokenizer: Tokenizer, system_prompt: str | None = None) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.system_prompt = template.system_prompt if system_prompt is None else system_prompt
        self.turns: list[tuple[str, str]] = []
        self.stop_ids = [self._special(name) for name in template.stop]

    def _special(self, name: str) -> int:
        token_id = self.tokenizer.special_id(name)
        if token_id is None:
            token_id = self.template.special.get(name)
        if token_id is None:
            raise TokenizerError(f"{self.tokenizer.path} does not know the token {name!r} that the "
                                 f"{self.template.name} template needs: is it this model's tokenizer?")
        return token_id

    def _render(self, pieces: Sequence[str], content: str = "") -> list[int]:
        ids: list[int] = []
        values = {"system": self.system_prompt, "content": content}
        for piece in pieces:
            if piece in self.template.special:
                ids.append(self._special(piece))
            else:  # one pass, so a literal "{system}" typed by the user stays as typed
                text = PLACEHOLDER.sub(lambda match: values[match.group(1)], piece)
                ids += self.tokenizer.encode(text) if text else []
        return ids

    def prompt_ids(self, user: str) -> list[int]:
        t = self.template
        ids = self._render(t.prefix)
        turns = [*self.turns, (user, "")] if t.history else [(user, "")]
        for index, (question, answer) in enumerate(turns):
            if index == 0 and t.first_user and self.system_prompt:
                ids += self._render(t.first_user, question)
            else:
                if index == 0 and t.system and self.system_prompt:
                    ids += self._render(t.system, self.system_prompt)
                ids += self._render(t.user, question)
            if index < len(turns) - 1:
                ids += self._render(t.assistant, answer)
        return ids + self._render(t.generation)

    def remember(self, user: str, answer: str) -> None:
        if self.template.history:
            self.turns.append((user, answer))

    def clear(self) -> None:
        self.turns.clear()


class StreamPrinter:
    """Writes the answer's new text after each token. It decodes the whole answer each time,
    because one token alone may be half a character or lose its leading space."""

    def __init__(self, tokenizer: Tokenizer, stop_ids: Iterable[int], write: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.write = write
        self.ids: list[int] = []
        self.shown = ""

    def token(self, step: TokenStep) -> None:
        if step.token in self.stop_ids:
            return
        self.ids.append(step.token)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._show(text)

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self._show(text)
        return text

    def _show(self, text: str) -> None:
        if len(text) > len(self.shown):
            self.write(text[len(self.shown):])
        self.shown = text


class Session(Protocol):
    """EngineSession (local) or RemoteEngineSession (SSH)."""

    def generate(self, request: GenerateRequest, timeout: float,
                 on_token: Callable[[TokenStep], None] | None = None) -> Generation: ...


@dataclass(frozen=True)
class Sampling:
    max_new: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def stats_text(generation: Generation) -> str:
    decode = generation.decode_tokens_per_s
    prefill = generation.prefill_tokens_per_s
    return (f"{len(generation.steps)} tokens, {f'{decode:.2f} tok/s' if decode else 'n/a tok/s'} decode, "
            f"prefill {generation.prompt_tokens} tokens in {generation.prefill_ms:.0f} ms"
            f"{f' ({prefill:.1f} tok/s)' if prefill else ''}, stop: {generation.reason}")


def chat_loop(session: Session, ready: Ready, conversation: Conversation, lines: Iterable[str],
              sampling: Sampling, timeout: float, out: TextIO = sys.stdout,
              note: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
              as_json: bool = False) -> int:
    """Answer each line; returns the number of answers. ``note`` shows status lines (stats,
    warnings) apart from the answer. Engine failures propagate (EngineError)."""
    answered = 0
    for raw in lines:
        user = raw.rstrip("\r\n")
        if not user.strip():
            continue
        if user.strip() in QUIT_WORDS:
            break
        if user.strip() == CLEAR_WORD:
            conversation.clear()
            note("(conversation cleared)")
            continue
        ids = conversation.prompt_ids(user)
        if len(ids) >= ready.seq and conversation.turns:
            note(f"(the conversation reached the model's {ready.seq} tokens: starting afresh)")
            conversation.clear()
            ids = conversation.prompt_ids(user)
        if len(ids) >= ready.seq:
            note(f"(your message is {len(ids)} tokens; this model holds {ready.seq} in all, "
                 "so it has no room to answer: shorten it)")
            continue
        request = GenerateRequest(ids=ids, max_new=min(sampling.max_new, ready.seq - len(ids)),
                                  temperature=sampling.temperature, top_p=sampling.top_p,
                                  seed=sampling.seed + answered, stop=conversation.stop_ids)

        def write(text: str) -> None:
            out.write(text)
            out.flush()

        printer = StreamPrinter(conversation.tokenizer, conversation.stop_ids,
                                (lambda _text: None) if as_json else write)
        generation = session.generate(request, timeout, printer.token)
        answer = printer.finish()
        conversation.remember(user, answer)
        answered += 1
        if as_json:
            json.dump({"schema": "llmtpu.chat/1", "prompt": user, "prompt_tokens": len(ids), "text": answer,
                       "tokens": generation.tokens, "reason": generation.reason,
                       "prefill_ms": generation.prefill_ms, "decode_ms": generation.decode_ms,
                       "decode_tokens_per_s": generation.decode_tokens_per_s}, out)
            out.write("\n")
            out.flush()
        else:
            out.write("\n")
            out.flush()
            note(f"[{stats_text(generation)}]")
    return answered
