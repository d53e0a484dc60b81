"""A tiny Llama-style model with random weights, exported the way LLM-TPU splits a model.

Runs in the export venv (Python 3.11 + CPU torch), called by build.sh:

    python tiny_llama.py OUT_DIR

writes one ONNX file per part (embedding, embedding_cache, block_N, block_cache_N, lm_head) and
reference.json: the fp32 model's greedy tokens for prompts whose top-1/top-2 logit gap is wide
enough at every step that F16/BF16 rounding on the chip cannot flip a token.

The parts follow the LLM-TPU (2024) layout that csrc/engine.cpp runs:
  embedding        input_ids i32 [1,SEQ]                  -> hidden [1,SEQ,H]
  embedding_cache  input_ids i32 [1,1]                    -> hidden [1,1,H]
  block_N          hidden [1,SEQ,H], position_ids i32 [1,SEQ], attention_mask [1,1,SEQ,SEQ]
                   -> hidden, past_k [1,SEQ,KVH,D], past_v [1,SEQ,KVH,D]
  block_cache_N    hidden [1,1,H], position_ids [1,1], attention_mask [1,1,1,SEQ+1],
                   history_k/v [1,SEQ,KVH,D] -> hidden, present_k/v [1,1,KVH,D]
  lm_head          hidden [1,1,H] -> logits f32 [1,VOCAB]
  lm_head_token    hidden [1,1,H] -> token i32 [1,1]  (llm_convert's default TopK head; compiled
                   as lm_head into the f16tok bmodel)
Masks hold 0 where a position may be attended and MASK_VALUE where not.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

MASK_VALUE = -10000.0
#: A reference step whose top-1/top-2 logit gap is below this could flip under F16 rounding.
MIN_SAFE_GAP = 0.25


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2
    inter: int = 128
    seq: int = 64
    rope_theta: float = 10000.0
    seed: int = 0
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class RMSNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope_tables(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin per position, [SEQ, D], in the rotate-half convention."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.seq).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Block(nn.Module):
    """One decoder layer; q/k/v kept as [B, S, heads, D] so the KV cache has that layout."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.head_dim
        self.attn_norm = RMSNorm(cfg.hidden)
        self.q = nn.Linear(cfg.hidden, cfg.heads * d, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.hidden, cfg.kv_heads * d, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.hidden, cfg.kv_heads * d, bias=cfg.qkv_bias)
        if cfg.qkv_bias:  # large enough to matter, so a runtime that dropped them would be caught
            for linear in (self.q, self.k, self.v):
                nn.init.normal_(linear.bias, std=0.5)
        self.o = nn.Linear(cfg.heads * d, cfg.hidden, bias=False)
        self.mlp_norm = RMSNorm(cfg.hidden)
        self.gate = nn.Linear(cfg.hidden, cfg.inter, bias=False)
        self.up = nn.Linear(cfg.hidden, cfg.inter, bias=False)
        self.down = nn.Linear(cfg.inter, cfg.hidden, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def project_kv(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised input -> rotated q [B,S,H,D], rotated k and v [B,S,KVH,D]."""
        b, s, _ = x.shape
        d = self.cfg.head_dim
        q = self.q(x).view(b, s, self.cfg.heads, d)
        k = self.k(x).view(b, s, self.cfg.kv_heads, d)
        v = self.v(x).view(b, s, self.cfg.kv_heads, d)
        cos = self.cos[position_ids].unsqueeze(2)  # [B,S,1,D]
        sin = self.sin[position_ids].unsqueeze(2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """q [B,Sq,H,D], k/v [B,Sk,KVH,D], additive mask [B,1,Sq,Sk] -> [B,Sq,H*D]."""
        b, sq, _, d = q.shape
        repeat = self.cfg.heads // self.cfg.kv_heads
        k = k.repeat_interleave(repeat, dim=2)
        v = v.repeat_interleave(repeat, dim=2)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(d) + mask
        out = torch.softmax(scores, dim=-1) @ v.transpose(1, 2)  # [B,H,Sq,D]
        return out.transpose(1, 2).reshape(b, sq, self.cfg.heads * d)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + self.o(attn)
        h = self.mlp_norm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


class Prefill(nn.Module):
    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.block.project_kv(self.block.attn_norm(hidden), position_ids)
        out = self.block.finish(hidden, self.block.attend(q, k, v, attention_mask))
        return out, k, v


class Decode(nn.Module):
    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history_k: torch.Tensor,
        history_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.block.project_kv(self.block.attn_norm(hidden), position_ids)
        keys = torch.cat([history_k, k], dim=1)
        values = torch.cat([history_v, v], dim=1)
        out = self.block.finish(hidden, self.block.attend(q, keys, values, attention_mask))
        return out, k, v


class Embedding(nn.Module):
    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


class LmHead(nn.Module):
    def __init__(self, norm: RMSNorm, head: nn.Linear) -> None:
        super().__init__()
        self.norm = norm
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden)).reshape(1, -1)


class LmHeadToken(LmHead):
    """llm_convert's default lm_head: the argmax on the chip, one int32 token id [1,1]."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden).topk(1).indices.to(torch.int32)


class TinyLlama(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        # A wide lm_head makes logits peaky, so greedy steps have clear winners.
        nn.init.normal_(self.head.weight, std=4.0 / math.sqrt(cfg.hidden))

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        """Plain uncached forward over the whole sequence: the independent reference."""
        n = len(tokens)
        x = self.embed(torch.tensor([tokens]))
        positions = torch.arange(n).unsqueeze(0)
        causal = torch.full((n, n), MASK_VALUE).triu(1).view(1, 1, n, n)
        for block in self.blocks:
            q, k, v = block.project_kv(block.attn_norm(x), positions)
            x = block.finish(x, block.attend(q, k, v, causal))
        return self.head(self.norm(x[:, -1]))[0]

    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
        """Greedy tokens and each step's top-1 minus top-2 logit."""
        tokens, gaps = list(prompt), []
        for _ in range(steps):
            top = self.logits(tokens).topk(2)
            gaps.append(float(top.values[0] - top.values[1]))
            tokens.append(int(top.indices[0]))
        return tokens[len(prompt):], gaps


def export(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str],
           outputs: list[str], path: Path) -> None:
    """Legacy TorchScript exporter, opset 15, IR 8: what tpu-mlir 1.30's onnx 1.14 reads."""
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                      opset_version=15, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    model.ir_version = 8
    onnx.save(model, str(path))


def export_parts(model: TinyLlama, out: Path) -> None:
    cfg = model.cfg
    h, s, kvh, d = cfg.hidden, cfg.seq, cfg.kv_heads, cfg.head_dim
    ids = torch.zeros(1, s, dtype=torch.int32)
    export(Embedding(model.embed), (ids,), ["input_ids"], ["hidden"], out / "embedding.onnx")
    export(Embedding(model.embed), (ids[:, :1],), ["input_ids"], ["hidden"],
           out / "embedding_cache.onnx")
    for i, block in enumerate(model.blocks):
        export(Prefill(block),
               (torch.zeros(1, s, h), torch.zeros(1, s, dtype=torch.int32), torch.zeros(1, 1, s, s)),
               ["input_states", "position_ids", "attention_mask"],
               ["hidden_states", "past_k", "past_v"], out / f"block_{i}.onnx")
        export(Decode(block),
               (torch.zeros(1, 1, h), torch.zeros(1, 1, dtype=torch.int32),
                torch.zeros(1, 1, 1, s + 1), torch.zeros(1, s, kvh, d), torch.zeros(1, s, kvh, d)),
               ["input_states", "position_ids", "attention_mask", "history_k", "history_v"],
               ["hidden_states", "present_k", "present_v"], out / f"block_cache_{i}.onnx")
    export(LmHead(model.norm, model.head), (torch.zeros(1, 1, h),), ["hidden_states"],
           ["logits"], out / "lm_head.onnx")
    export(LmHeadToken(model.norm, model.head), (torch.zeros(1, 1, h),), ["hidden_states"],
           ["token"], out / "lm_head_token.onnx")


def pick_prompts(model: TinyLlama, wanted: int, steps: int) -> list[dict[str, object]]:
    """Prompts (fixed seed) whose every greedy step has a safe gap and whose output varies."""
    rng = torch.Generator().manual_seed(1234)
    chosen: list[dict[str, object]] = []
    for _ in range(200):
        length = int(torch.randint(4, 12, (1,), generator=rng))
        prompt = [int(t) for t in torch.randint(1, model.cfg.vocab, (length,), generator=rng)]
        tokens, gaps = model.greedy(prompt, steps)
        if min(gaps) >= MIN_SAFE_GAP and len(set(tokens)) > steps // 2:
            chosen.append({"prompt": prompt, "tokens": tokens,
                           "gaps": [round(g, 4) for g in gaps]})
            if len(chosen) == wanted:
                return chosen
    raise SystemExit(f"no {wanted} prompts with every gap >= {MIN_SAFE_GAP}; change the seed")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    model = TinyLlama(cfg).eval()
    export_parts(model, out)
    reference = {
        "config": asdict(cfg),
        "mask_value": MASK_VALUE,
        "min_safe_gap": MIN_SAFE_GAP,
        "torch": torch.__version__,
        "cases": pick_prompts(model, wanted=2, steps=8),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"exported {2 * cfg.layers + 3} parts and reference.json to {out}")


if __name__ == "__main__":
    main()
