"""Text <-> token ids on the Python side, with the libraries the models ship files for.

HF `tokenizers` reads a tokenizer.json; `sentencepiece` reads a .model (Llama 2, ChatGLM3).
The engine only sees ids, so the tokenizer never has to exist on the board.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

#: Looked for in a model folder, in this order.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class TokenizerError(Exception):
    """No usable tokenizer; the message says what is missing."""


class Tokenizer(Protocol):
    path: Path

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` alone: no BOS/EOS added (templates place those)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, name: str) -> int | None:
        """The id of a special token such as ``<|im_end|>``, if this tokenizer knows it."""
        ...


class HFTokenizer:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HF

        self.path = path
        try:
            self._tok = HF.from_file(str(path))
        except Exception as exc:  # the library raises its own Exception subclasses
            raise TokenizerError(f"{path}: not a tokenizer.json the tokenizers library can read ({exc})") from exc

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def special_id(self, name: str) -> int | None:
        token_id = self._tok.token_to_id(name)
        return int(token_id) if token_id is not None else None


class SentencePieceTokenizer:
    def __init__(self, path: Path) -> None:
        import sentencepiece

        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path}: not a sentencepiece model ({exc})") from exc

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._sp.EncodeAsIds(text)]

    def decode(self, ids: Sequence[int]) -> str:
        size = self._sp.GetPieceSize()
        return str(self._sp.DecodeIds([int(i) for i in ids if 0 <= i < size]))  # ids past the file: added tokens

    def special_id(self, name: str) -> int | None:
        token_id = int(self._sp.PieceToId(name))  # unknown pieces map to <unk>: check the way back
        return token_id if self._sp.IdToPiece(token_id) == name else None


def find_tokenizer(folder: Path) -> Path | None:
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return folder / name
    models = sorted(folder.glob("*.model"))
    return models[0] if models else None


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer.json or sentencepiece .model file, or a folder holding one."""
    if path.is_dir():
        found = find_tokenizer(path)
        if found is None:
            raise TokenizerError(f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)} or *.model)")
        path = found
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file")
    if path.suffix == ".json":
        return HFTokenizer(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    raise TokenizerError(f"{path}: llmtpu reads tokenizer.json (HF tokenizers) or a sentencepiece .model, "
                         f"not {path.suffix or 'this file'}")
