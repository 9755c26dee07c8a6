"""Grouped-query attention (Qwen-MoE, Mixtral) over the preallocated KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hymoe.config import ModelConfig
from hymoe.kv.cache import KVCache, Step
from hymoe.layers.norm import RMSNorm
from hymoe.layers.rope import Rope


class GQAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: Rope, is_sliding: bool = False):
        super().__init__()
        n, g, d, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = n, g, d
        self.q_proj = nn.Linear(h, n * d, bias=cfg.is_qkv_bias)
        self.k_proj = nn.Linear(h, g * d, bias=cfg.is_qkv_bias)
        self.v_proj = nn.Linear(h, g * d, bias=cfg.is_qkv_bias)
        self.o_proj = nn.Linear(n * d, h, bias=cfg.is_o_bias)
        if cfg.is_qk_norm:
            self.q_norm, self.k_norm = RMSNorm(d, cfg.rms_norm_eps), RMSNorm(d, cfg.rms_norm_eps)
        self.is_qk_norm = cfg.is_qk_norm
        self.rope = rope
        self.is_sliding = is_sliding

    def cache_entries(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.num_kv_heads, self.head_dim), "v": (self.num_kv_heads, self.head_dim)}

    def forward(self, x: torch.Tensor, step: Step, cache: dict[str, torch.Tensor],
                cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)  # [B, T, N, D]
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)  # [B, T, G, D]
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.is_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope.apply(q, *cos_sin), self.rope.apply(k, *cos_sin)
        keys = KVCache.write_read(cache["k"], k, step)  # [B, S, G, D]
        values = KVCache.write_read(cache["v"], v, step)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2).to(q.dtype), values.transpose(1, 2).to(q.dtype),
            attn_mask=step.window_mask if self.is_sliding else step.mask, scale=self.head_dim ** -0.5, enable_gqa=True,
        )  # [B, N, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
