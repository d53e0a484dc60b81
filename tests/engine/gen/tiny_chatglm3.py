"""A tiny ChatGLM3-style model with random weights, exported in LLM-TPU's ChatGLM3 layout.

Runs in the export venv, called by build.sh:

    python tiny_chatglm3.py OUT_DIR

The layout is that of LLM-TPU's models/ChatGLM3/compile (export_onnx.py + compile.sh):
  embedding        input_ids i32 [1,SEQ] -> [1,SEQ,H]        embedding_cache [1,1] -> [1,1,H]
  block_N          input_states [SEQ,1,H] (sequence first), position_ids [1,SEQ],
                   attention_mask [1,1,SEQ,SEQ] -> hidden [SEQ,1,H], past_k/v [SEQ,1,G,D]
  block_cache_N    input_states [1,1,H], position_ids [1,1], attention_mask [1,1,1,SEQ+1],
                   history_k/v [SEQ,1,G,D] -> hidden [1,1,H] and the whole cache shifted by one
                   row, the new K/V last: past_k/v [SEQ,1,G,D]
  lm_head          [1,H] -> logits [1,V]; greedy_head and penalty_sample_head as in Qwen2
The runtime keeps the cache right-aligned (the newest row last) with a left-padded decode mask.
The architecture follows GLM's shape: multi-query attention with G=2 key/value groups, biases
on q/k/v, rotary embedding on the first half of each head's dims in interleaved pairs, RMSNorm
and a SwiGLU MLP. Weights are random; the reference tokens come from the plain uncached model.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tiny_llama import MASK_VALUE, MIN_SAFE_GAP, RMSNorm, export
from tiny_qwen2 import GreedyHead, PenaltySampleHead
from torch import nn


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 64
    heads: int = 4
    groups: int = 2  # multi_query_group_num
    layers: int = 2
    ffn: int = 128
    seq: int = 64
    seed: int = 3

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def rotary_tables(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [SEQ, D/4] for the interleaved pairs of the rotated half of each head."""
    rot = cfg.head_dim // 2
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    angles = torch.outer(torch.arange(cfg.seq).float(), inv_freq)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [S,B,N,D]; cos/sin [S,1,1,D/4]: rotate pairs (0,1),(2,3)... of the first D/2 dims."""
    d = x.shape[-1]
    rot, rest = x[..., : d // 2], x[..., d // 2:]
    pairs = rot.reshape(*rot.shape[:-1], d // 4, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([turned, rest], dim=-1)


class Layer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.head_dim
        self.input_norm = RMSNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, (cfg.heads + 2 * cfg.groups) * d, bias=True)
        nn.init.normal_(self.qkv.bias, std=0.5)
        self.dense = nn.Linear(cfg.heads * d, cfg.hidden, bias=False)
        self.post_norm = RMSNorm(cfg.hidden)
        self.h_to_4h = nn.Linear(cfg.hidden, 2 * cfg.ffn, bias=False)
        self.four_h_to_h = nn.Linear(cfg.ffn, cfg.hidden, bias=False)
        cos, sin = rotary_tables(cfg)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def project(self, x: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [S,1,H] (normalised) -> q [S,1,N,D], k and v [S,1,G,D], rotated at position_ids [1,S]."""
        s = x.shape[0]
        cfg, d = self.cfg, self.cfg.head_dim
        q, k, v = self.qkv(x).split([cfg.heads * d, cfg.groups * d, cfg.groups * d], dim=-1)
        q = q.view(s, 1, cfg.heads, d)
        k = k.view(s, 1, cfg.groups, d)
        v = v.view(s, 1, cfg.groups, d)
        cos = self.cos[position_ids[0]].view(s, 1, 1, -1)
        sin = self.sin[position_ids[0]].view(s, 1, 1, -1)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [Sq,1,N,D], k/v [Sk,1,G,D], additive mask [1,1,Sq,Sk] -> [Sq,1,N*D]."""
        sq, d = q.shape[0], self.cfg.head_dim
        repeat = self.cfg.heads // self.cfg.groups
        k = k.repeat_interleave(repeat, dim=2)
        v = v.repeat_interleave(repeat, dim=2)
        scores = q.permute(1, 2, 0, 3) @ k.permute(1, 2, 3, 0) / math.sqrt(d) + mask  # [1,N,Sq,Sk]
        out = torch.softmax(scores, dim=-1) @ v.permute(1, 2, 0, 3)  # [1,N,Sq,D]
        return out.permute(2, 0, 1, 3).reshape(sq, 1, self.cfg.heads * d)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + self.dense(attn)
        gate, up = self.h_to_4h(self.post_norm(x)).chunk(2, dim=-1)
        return x + self.four_h_to_h(torch.nn.functional.silu(gate) * up)


class Prefill(nn.Module):
    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.layer.project(self.layer.input_norm(hidden), position_ids)
        return self.layer.finish(hidden, self.layer.attend(q, k, v, attention_mask)), k, v


class Decode(nn.Module):
    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                history_k: torch.Tensor, history_v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.layer.project(self.layer.input_norm(hidden), position_ids)
        keys = torch.cat([history_k, k], dim=0)
        values = torch.cat([history_v, v], dim=0)
        out = self.layer.finish(hidden, self.layer.attend(q, keys, values, attention_mask))
        return out, keys[1:], values[1:]  # the whole cache, shifted: the new row is last


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
        return self.head(self.norm(hidden))


class TinyChatGlm(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        nn.init.normal_(self.head.weight, std=4.0 / math.sqrt(cfg.hidden))

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        n = len(tokens)
        x = self.embed(torch.tensor([tokens])).view(n, 1, -1)
        positions = torch.arange(n).unsqueeze(0)
        causal = torch.full((n, n), MASK_VALUE).triu(1).view(1, 1, n, n)
        for layer in self.layers:
            q, k, v = layer.project(layer.input_norm(x), positions)
            x = layer.finish(x, layer.attend(q, k, v, causal))
        return self.head(self.norm(x[-1, 0]))

    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
        tokens, gaps = list(prompt), []
        for _ in range(steps):
            top = self.logits(tokens).topk(2)
            gaps.append(float(top.values[0] - top.values[1]))
            tokens.append(int(top.indices[0]))
        return tokens[len(prompt):], gaps


def export_parts(model: TinyChatGlm, out: Path) -> None:
    cfg = model.cfg
    h, s, g, d = cfg.hidden, cfg.seq, cfg.groups, cfg.head_dim
    ids = torch.zeros(1, s, dtype=torch.int32)
    export(Embedding(model.embed), (ids,), ["input_ids"], ["input_embed"], out / "embedding.onnx")
    export(Embedding(model.embed), (ids[:, :1],), ["input_ids"], ["input_embed"], out / "embedding_cache.onnx")
    for i, layer in enumerate(model.layers):
        export(Prefill(layer),
               (torch.zeros(s, 1, h), torch.zeros(1, s, dtype=torch.int32), torch.zeros(1, 1, s, s)),
               ["input_states", "position_ids", "attention_mask"], ["hidden_states", "past_k", "past_v"],
               out / f"block_{i}.onnx")
        export(Decode(layer),
               (torch.zeros(1, 1, h), torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, s + 1),
                torch.zeros(s, 1, g, d), torch.zeros(s, 1, g, d)),
               ["input_states", "position_ids", "attention_mask", "history_k", "history_v"],
               ["hidden_states", "past_k", "past_v"], out / f"block_cache_{i}.onnx")
    export(LmHead(model.norm, model.head), (torch.zeros(1, h),), ["hidden_states"], ["m_logits"],
           out / "lm_head.onnx")
    export(GreedyHead(), (torch.zeros(1, cfg.vocab),), ["m_logits"], ["token"], out / "greedy_head.onnx")
    export(PenaltySampleHead(),
           (torch.zeros(1, cfg.vocab), torch.zeros(1, s, dtype=torch.int64), torch.tensor([0.8]),
            torch.tensor([0.98]), torch.tensor([0.98])),
           ["m_logits", "input_ids", "top_p", "temperature", "penalty"], ["probs", "token"],
           out / "penalty_sample_head.onnx")


def pick_prompts(model: TinyChatGlm, wanted: int, steps: int) -> list[dict[str, object]]:
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
    model = TinyChatGlm(cfg).eval()
    export_parts(model, out)
    reference = {
        "config": asdict(cfg),
        "mask_value": MASK_VALUE,
        "min_safe_gap": MIN_SAFE_GAP,
        "torch": torch.__version__,
        "layout": "LLM-TPU models/ChatGLM3 (export_onnx.py, compile.sh f16)",
        "cases": pick_prompts(model, wanted=2, steps=8),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"exported the ChatGLM3 parts and reference.json to {out}")


if __name__ == "__main__":
    main()
