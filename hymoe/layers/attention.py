"""Grouped-query attention (Qwen-MoE, Mixtral) over the preallocated KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hymoe.config import ModelConfig
from hymoe.kv.cache import KVCache, Step
from hymoe.layers.attend import attention_mass, select_blocks
from hymoe.layers.linear import project
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
        # set by placement: the whole attention (norms, rotation, cache, scores) in one native call
        self.kernel = None  # (experts/native_attention.py)

    def input_groups(self) -> list[tuple[nn.Module, ...]]:
        """Linears that read the same input, which placement may compute in one call."""
        return [(self.q_proj, self.k_proj, self.v_proj)]

    def cache_entries(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.num_kv_heads, self.head_dim), "v": (self.num_kv_heads, self.head_dim)}

    def forward(self, x: torch.Tensor, step: Step, cache: dict[str, torch.Tensor],
                cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        if self.kernel is not None and step.kept is None:  # the kernel takes slot s to hold position s
            return self.o_proj(self.kernel(q, k, v, step, cache, cos_sin))
        q = q.view(b, t, self.num_heads, self.head_dim)  # [B, T, N, D]
        k = k.view(b, t, self.num_kv_heads, self.head_dim)  # [B, T, G, D]
        v = v.view(b, t, self.num_kv_heads, self.head_dim)
        if self.is_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope.apply(q, *cos_sin), self.rope.apply(k, *cos_sin)
        keys = KVCache.write_read(cache["k"], k, step).transpose(1, 2).to(q.dtype)  # [B, G, S, D]
        values = KVCache.write_read(cache["v"], v, step).transpose(1, 2).to(q.dtype)
        mask = step.attn_mask(self.is_sliding)  # [B, 1, T, S]
        if step.kept is not None:  # a retention policy: topk-blocks narrows the mask, h2o weighs positions
            mask = self._policy(q, keys, mask, step)
        if t <= 16:  # decode: a few matmuls; SDPA's CPU kernel costs ~1 ms per call for one query
            out = self._attend_small(q, keys, values, mask)
        else:  # prefill: SDPA (torch's flash kernel on the CPU: 2.5-3.7x faster here than attend_blocked
            # for a Qwen3 shape, 32 heads over 4, float32; MLA's one wide latent head is the other way round)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                                 scale=self.head_dim ** -0.5, enable_gqa=True)  # [B, N, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _policy(self, q, keys, mask, step: Step) -> torch.Tensor:
        """q [B, T, N, D], keys [B, G, S, D], mask [B, 1, T, S] -> the mask topk-blocks leaves (or mask);
        adds each slot's attention weight to step.mass where h2o wants it."""
        b, t, n, d = q.shape
        grouped = q.transpose(1, 2).reshape(b, self.num_kv_heads, n // self.num_kv_heads, t, d)  # [B, G, N/G, T, D]
        if step.select is not None:
            mask = select_blocks(grouped, keys, mask, step.select, step.select_size)
        if step.mass is not None:
            step.mass += attention_mass(grouped, keys, mask, d ** -0.5, step.is_query).to(step.mass.device)
        return mask

    def _attend_small(self, q, keys, values, mask) -> torch.Tensor:
        """q [B, T, N, D], keys/values [B, G, S, D], mask [B, 1, T, S] -> [B, N, T, D]."""
        b, t, n, d = q.shape
        g = self.num_kv_heads
        # the N/G query heads of each kv head, with their tokens, as rows of one matmul
        q = q.transpose(1, 2).reshape(b, g, n // g * t, d)  # [B, G, N/G*T, D]
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.head_dim ** -0.5  # [B, G, N/G*T, S]
        scores = scores.view(b, g, n // g, t, -1).masked_fill(~mask[:, :, None], float("-inf"))
        probs = scores.softmax(-1).to(q.dtype).view(b, g, n // g * t, -1)
        return torch.matmul(probs, values).view(b, n, t, d)
