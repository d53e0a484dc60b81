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


@dataclass(frozen=True)
class FamilyModel:
    """A tiny random-weight model of one architecture, in LLM-TPU's layout for it."""

    name: str
    layout: str  # what the engine's ready line says: llama, chatglm or gpt_bigcode
    bmodel: Path
    reference: Path
    source: str  # the LLM-TPU files whose network layout it copies


#: One per architecture of the seed's command table that the engine runs (gen/build.sh makes them).
FAMILIES = (
    FamilyModel("llama", "llama", HERE / "tiny_llama_f16.bmodel", HERE / "reference.json",
                "LLM-TPU 2024 Llama2 demo layout (models/Llama2/compile)"),
    FamilyModel("qwen2", "llama", HERE / "tiny_qwen2_bf16.bmodel", HERE / "reference_qwen2.json",
                "LLM-TPU models/Qwen2/compile: export_onnx.py, compile.sh (bf16, io_alone)"),
    FamilyModel("chatglm3", "chatglm", HERE / "tiny_chatglm3_f16.bmodel", HERE / "reference_chatglm3.json",
                "LLM-TPU models/ChatGLM3/compile: export_onnx.py, compile.sh (f16)"),
    FamilyModel("gpt_bigcode", "gpt_bigcode", HERE / "tiny_gpt_bigcode_f16.bmodel",
                HERE / "reference_gpt_bigcode.json",
                "LLM-TPU models/WizardCoder/compile: export_onnx.py, compile.sh (f16, f32 edges)"),
)


def reference_cases(reference: Path = HERE / "reference.json") -> list[ReferenceCase]:
    data = json.loads(reference.read_text())
    return [ReferenceCase(list(c["prompt"]), list(c["tokens"]), list(c["gaps"])) for c in data["cases"]]
