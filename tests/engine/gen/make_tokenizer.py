"""Write runtime/testmodel/tokenizer.json: a real HF `tokenizers` file for the tiny test model.

The tiny model has 256 token ids and random weights, so any 256-symbol vocabulary fits it. This
one is character-level and readable: id i is the character chr(i) when that is a visible
Latin-1 character (so typed ASCII text gets its own byte values as ids), and U+0100 + i
(Ā, ā, ...) for the control codes, space-like and invisible ones. Every id decodes to one
printable character, so the reference tokens show as text, and text made by decoding ids
encodes back to exactly those ids. Characters outside the vocabulary become "?" (id 63).

Run: .venv/bin/python tests/engine/gen/make_tokenizer.py   (deterministic; commit the result)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

VOCAB = 256
OUT = Path(__file__).resolve().parents[3] / "runtime" / "testmodel" / "tokenizer.json"


def symbol(i: int) -> str:
    char = chr(i)
    visible = char.isprintable() and not char.isspace() and i != 0xAD  # U+00AD soft hyphen: invisible
    return char if visible or char == " " else chr(0x100 + i)


def build() -> Tokenizer:
    vocab = {symbol(i): i for i in range(VOCAB)}
    assert len(vocab) == VOCAB, "two ids share a symbol"
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tokenizer.decoder = decoders.Fuse()  # join without spaces
    return tokenizer


def main() -> int:
    tokenizer = build()
    ids = list(range(VOCAB))
    assert tokenizer.encode(tokenizer.decode(ids)).ids == ids, "decode/encode does not round-trip"
    tokenizer.save(str(OUT), pretty=True)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
