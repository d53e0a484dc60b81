"""A tiny Qwen2 with random weights, exported in LLM-TPU's Qwen2 layout.

Runs in the export venv, called by build.sh:

    python tiny_qwen2.py OUT_DIR

LLM-TPU's models/Qwen2/compile (export_onnx.py + compile.sh) splits Qwen2 the Llama way, with
these differences that the engine must cope with:
  - q/k/v projections have biases, RoPE theta is 1e6;
  - lm_head takes [1,H] (compile.sh: --input_shapes [[1,H]]);
  - two extra networks the engine does not use: greedy_head (logits [1,V] -> token [1,1]) and
    penalty_sample_head (logits, input_ids [1,SEQ], top_p, temperature, penalty -> probs and
    tokens of the top 50);
  - block_cache_N is compiled with --addr_mode io_alone (compile.sh's bf16 io_alone build).
The reference tokens come from the plain uncached fp32 model, as for tiny_llama.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tiny_llama import (
    MASK_VALUE,
    MIN_SAFE_GAP,
    Config,
    LmHead,
    TinyLlama,
    export,
    export_parts,
    pick_prompts,
)
from torch import nn

TOP_K = 50


class GreedyHead(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.topk(1).indices.to(torch.int32)


class PenaltySampleHead(nn.Module):
    """Repetition penalty on the prompt's ids, top-k, temperature, top-p: probabilities and ids."""

    def forward(self, logits: torch.Tensor, input_ids: torch.Tensor, top_p: torch.Tensor,
                temperature: torch.Tensor, penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = torch.gather(logits, 1, input_ids)
        penalised = torch.where(seen < 0, seen * penalty, seen / penalty)
        logits = logits.scatter(1, input_ids, penalised)
        values, ids = logits.topk(TOP_K)
        values = values / temperature
        probs = values.softmax(dim=1)
        inside = probs.cumsum(dim=1) - probs < top_p  # the mass before a token: the top one stays
        kept = torch.where(inside, values, torch.full_like(values, -1000.0))
        return kept.softmax(dim=1), ids.to(torch.int32)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(rope_theta=1_000_000.0, seed=7, qkv_bias=True)
    model = TinyLlama(cfg).eval()
    export_parts(model, out)
    # Qwen2's lm_head takes [1,H]; the head networks work on f32 logits [1,V].
    export(LmHead(model.norm, model.head), (torch.zeros(1, cfg.hidden),), ["hidden_states"],
           ["m_logits"], out / "lm_head.onnx")
    (out / "lm_head_token.onnx").unlink()  # the token-head variant is tiny_llama's test only
    export(GreedyHead(), (torch.zeros(1, cfg.vocab),), ["m_logits"], ["token"], out / "greedy_head.onnx")
    export(PenaltySampleHead(),
           (torch.zeros(1, cfg.vocab), torch.zeros(1, cfg.seq, dtype=torch.int64), torch.tensor([0.8]),
            torch.tensor([0.98]), torch.tensor([0.98])),
           ["m_logits", "input_ids", "top_p", "temperature", "penalty"], ["probs", "token"],
           out / "penalty_sample_head.onnx")
    reference = {
        "config": asdict(cfg),
        "mask_value": MASK_VALUE,
        "min_safe_gap": MIN_SAFE_GAP,
        "torch": torch.__version__,
        "layout": "LLM-TPU models/Qwen2 (export_onnx.py, compile.sh bf16 io_alone)",
        "cases": pick_prompts(model, wanted=2, steps=8),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"exported the Qwen2 parts and reference.json to {out}")


if __name__ == "__main__":
    main()
