"""A tiny GPT-BigCode (WizardCoder) with random weights, exported in LLM-TPU's WizardCoder layout.

Runs in the export venv, called by build.sh:

    python tiny_gpt_bigcode.py OUT_DIR

The layout is that of LLM-TPU's models/WizardCoder/compile (export_onnx.py + compile.sh), f32 at
every network's edge (no --quant_input/--quant_output):
  embedding        input_ids i32, input_pos i32 -> token + learned position embedding; one
                   network with two stages, [1,1] and [1,SEQ] (compile.sh compiles it twice under
                   one name and combines the two)
  block_N          input_states [1,SEQ,H], attention_mask [1,1,SEQ,SEQ]
                   -> hidden, past_layer [1,SEQ,2D] (multi-query: one K and one V head, concatenated)
  block_cache_N    input_states [1,1,H], past_cache [1,SEQ,2D], attention_mask [1,1,1,SEQ+1]
                   -> hidden, current_cache [1,1,2D] (the new row)
  lm_head          [1,H] -> the token id (TopK on the chip)
The architecture is GPT-BigCode's: LayerNorm, multi-query attention, GELU MLP, learned positions.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tiny_llama import MASK_VALUE, MIN_SAFE_GAP, export
from torch import nn


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    inter: int = 256
    seq: int = 64
    seed: int = 5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class Layer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.head_dim
        self.ln_1 = nn.LayerNorm(cfg.hidden)
        self.c_attn = nn.Linear(cfg.hidden, cfg.hidden + 2 * d)
        self.c_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln_2 = nn.LayerNorm(cfg.hidden)
        self.c_fc = nn.Linear(cfg.hidden, cfg.inter)
        self.mlp_proj = nn.Linear(cfg.inter, cfg.hidden)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [1,S,H] -> q [1,S,H], the new cache rows kv [1,S,2D] (K then V)."""
        q, kv = self.c_attn(self.ln_1(x)).split([self.cfg.hidden, 2 * self.cfg.head_dim], dim=-1)
        return q, kv

    def attend(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [1,Sq,H], kv [1,Sk,2D], additive mask [1,1,Sq,Sk] -> [1,Sq,H]; every head shares K, V."""
        d, sq = self.cfg.head_dim, q.shape[1]
        k, v = kv.split([d, d], dim=-1)  # [1,Sk,D]
        heads = q.view(1, sq, self.cfg.heads, d).transpose(1, 2)  # [1,N,Sq,D]
        scores = heads @ k.transpose(1, 2).unsqueeze(1) / math.sqrt(d) + mask  # [1,N,Sq,Sk]
        out = torch.softmax(scores, dim=-1) @ v.unsqueeze(1)  # [1,N,Sq,D]
        return out.transpose(1, 2).reshape(1, sq, self.cfg.hidden)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + self.c_proj(attn)
        return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Prefill(nn.Module):
    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, kv = self.layer.project(hidden)
        return self.layer.finish(hidden, self.layer.attend(q, kv, attention_mask)), kv


class Decode(nn.Module):
    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, past_cache: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        q, kv = self.layer.project(hidden)
        out = self.layer.finish(hidden, self.layer.attend(q, torch.cat([past_cache, kv], dim=1), attention_mask))
        return out, kv


class Embedding(nn.Module):
    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding) -> None:
        super().__init__()
        self.wte = wte
        self.wpe = wpe

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids) + self.wpe(input_pos)


class LmHead(nn.Module):
    def __init__(self, ln_f: nn.LayerNorm, head: nn.Linear) -> None:
        super().__init__()
        self.ln_f = ln_f
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(hidden)).topk(1).indices.to(torch.int32)


class TinyGptBigCode(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.seq, cfg.hidden)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        nn.init.normal_(self.head.weight, std=4.0 / math.sqrt(cfg.hidden))

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        n = len(tokens)
        x = self.wte(torch.tensor([tokens])) + self.wpe(torch.arange(n).unsqueeze(0))
        causal = torch.full((n, n), MASK_VALUE).triu(1).view(1, 1, n, n)
        for layer in self.layers:
            q, kv = layer.project(x)
            x = layer.finish(x, layer.attend(q, kv, causal))
        return self.head(self.ln_f(x[0, -1]))

    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
        tokens, gaps = list(prompt), []
        for _ in range(steps):
            top = self.logits(tokens).topk(2)
            gaps.append(float(top.values[0] - top.values[1]))
            tokens.append(int(top.indices[0]))
        return tokens[len(prompt):], gaps


def export_parts(model: TinyGptBigCode, out: Path) -> None:
    cfg = model.cfg
    h, s, d = cfg.hidden, cfg.seq, cfg.head_dim
    ids = torch.zeros(1, s, dtype=torch.int32)
    export(Embedding(model.wte, model.wpe), (ids, ids), ["input_ids", "input_pos"], ["hidden_state"],
           out / "embedding.onnx")
    for i, layer in enumerate(model.layers):
        export(Prefill(layer), (torch.zeros(1, s, h), torch.zeros(1, 1, s, s)),
               ["input_states", "attention_mask"], ["hidden_states", "past_layer"], out / f"block_{i}.onnx")
        export(Decode(layer), (torch.zeros(1, 1, h), torch.zeros(1, s, 2 * d), torch.zeros(1, 1, 1, s + 1)),
               ["input_states", "past_cache", "attention_mask"], ["hidden_states", "current_cache"],
               out / f"block_cache_{i}.onnx")
    export(LmHead(model.ln_f, model.head), (torch.zeros(1, h),), ["hidden_states"], ["token"], out / "lm_head.onnx")


def pick_prompts(model: TinyGptBigCode, wanted: int, steps: int) -> list[dict[str, object]]:
    rng = torch.Generator().manual_seed(1234)
    chosen: list[dict[str, object]] = []
    for _ in range(300):
        length = int(torch.randint(4, 12, (1,), generator=rng))
        prompt = [int(t) for t in torch.randint(1, model.cfg.vocab, (length,), generator=rng)]
        tokens, gaps = model.greedy(prompt, steps)
        if min(gaps) >= MIN_SAFE_GAP and len(set(tokens)) > steps // 2:
            chosen.append({"prompt": prompt, "tokens": tokens, "gaps": [round(g, 4) for g in gaps]})
            if len(chosen) == wanted:
                return chosen
    raise SystemExit(f"no {wanted} prompts with every gap >= {MIN_SAFE_GAP}; change the seed")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    model = TinyGptBigCode(cfg).eval()
    export_parts(model, out)
    reference = {
        "config": asdict(cfg),
        "mask_value": MASK_VALUE,
        "min_safe_gap": MIN_SAFE_GAP,
        "torch": torch.__version__,
        "layout": "LLM-TPU models/WizardCoder (export_onnx.py, compile.sh f16)",
        "cases": pick_prompts(model, wanted=2, steps=8),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"exported the GPT-BigCode parts and reference.json to {out}")


if __name__ == "__main__":
    main()
