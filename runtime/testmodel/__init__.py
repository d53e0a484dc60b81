"""The tiny test model: a 2-layer random-weight Llama compiled for BM1684X, with its reference.

Made by tests/engine/gen/build.sh (see csrc/README.md); small enough to commit (~0.3 MB each,
kernel module removed). reference.json holds the fp32 PyTorch model's greedy tokens for prompts
whose every step has a safe top-1/top-2 logit gap, so a correct engine reproduces them exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Quantisation modes committed, each one bmodel.
MODES = ("f16", "w8bf16")
#: f16 with llm_convert's default lm_head (TopK on the chip: one int32 token id, no logits).
TOKEN_HEAD_MODE = "f16tok"


@dataclass(frozen=True)
class ReferenceCase:
    prompt: list[int]
    tokens: list[int]
    gaps: list[float]


def bmodel_path(mode: str = "f16") -> Path:
    if mode not in (*MODES, TOKEN_HEAD_MODE):
        raise ValueError(f"no tiny test model for mode {mode!r}; there are {', '.join(MODES)}, {TOKEN_HEAD_MODE}")
    return HERE / f"tiny_llama_{mode}.bmodel"


def reference_cases() -> list[ReferenceCase]:
    data = json.loads((HERE / "reference.json").read_text())
    return [ReferenceCase(list(c["prompt"]), list(c["tokens"]), list(c["gaps"])) for c in data["cases"]]
