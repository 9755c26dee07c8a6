"""Multi-head latent attention (DeepSeek-V2/V3) with the compressed cache and absorbed projections.

The cache holds only [latent R | rotary key Dr] per position. Instead of expanding keys and values
for every cached position, the key up-projection is folded into the query and the value
up-projection applied after attention, so each step costs O(S * R) per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hymoe.config import ModelConfig
from hymoe.errors import HymoeError
from hymoe.experts.native_attention import CACHE_TYPES
from hymoe.kv.cache import KVCache, Step
from hymoe.layers.attend import attend_blocked, attention_mass, select_blocks
from hymoe.layers.linear import project
from hymoe.layers.norm import RMSNorm
from hymoe.layers.rope import Rope, yarn_mscale


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: Rope):
        super().__init__()
        h, n = cfg.hidden_size, cfg.num_heads
        self.num_heads, self.rank = n, cfg.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk_dim = self.nope_dim + self.rope_dim
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=cfg.is_o_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, n * qk_dim, bias=False)
        else:
            self.q_proj = nn.Linear(h, n * qk_dim, bias=False)
        self.is_q_lora = bool(cfg.q_lora_rank)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.rank + self.rope_dim, bias=cfg.is_o_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, n * (self.nope_dim + self.v_dim), bias=False)
        self.kv_b_proj.keeps_float = True  # its weight is split per head below, never called
        self.o_proj = nn.Linear(n * self.v_dim, h, bias=cfg.is_o_bias)
        self.scale = qk_dim ** -0.5
        rc = cfg.rope
        if rc.kind == "yarn" and rc.mscale_all_dim:
            self.scale *= yarn_mscale(rc.factor, rc.mscale_all_dim) ** 2
        self.rope = rope
        # set by placement on the CPU for float32 layers (their outputs are float32 too): keys' and
        # values' per-head products on the native engine (experts/native_linear.py NativeHeadLinear),
        # instead of torch's bmm over the float weights
        self.up_kernels = None
        self.attend_kernel = None  # the same: attention over the latent cache (NativeLatentAttention)
        # set at load from a file of llama.cpp's split: attn_k_b's and attn_v_b's (format, rows), which
        # the native products read in place (GGUFSource.raw_up)
        self.stored_up = None

    def input_groups(self) -> list[tuple[nn.Module, ...]]:
        """Linears that read the same input, which placement may compute in one call."""
        return [(self.q_a_proj if self.is_q_lora else self.q_proj, self.kv_a_proj_with_mqa)]

    def cache_entries(self) -> dict[str, tuple[int, ...]]:
        return {"latent": (self.rank + self.rope_dim,)}

    def forward(self, x: torch.Tensor, step: Step, cache: dict[str, torch.Tensor],
                cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        n, r = self.num_heads, self.rank
        q, kv_a = project(x, self.q_a_proj if self.is_q_lora else self.q_proj, self.kv_a_proj_with_mqa)
        q = self.q_b_proj(self.q_a_layernorm(q)) if self.is_q_lora else q
        q = q.view(b, t, n, self.nope_dim + self.rope_dim)
        q_nope, q_rot = q.split([self.nope_dim, self.rope_dim], dim=-1)  # [B, T, N, Dn], [B, T, N, Dr]
        latent, k_rot = kv_a.split([r, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)  # [B, T, R]
        q_rot = self.rope.apply(q_rot, *cos_sin)
        k_rot = self.rope.apply(k_rot[:, :, None], *cos_sin)[:, :, 0]  # [B, T, Dr]
        if self.up_kernels is not None:
            q_latent = self.up_kernels[0](q_nope).transpose(1, 2)  # [B, T, N, R] -> [B, N, T, R] (float32, as q)
        else:
            q_latent = _per_head(q_nope.transpose(1, 2), self.up_weights()[0])  # [B, N, T, R]
        query = torch.cat((q_latent, q_rot.transpose(1, 2)), dim=-1)  # [B, N, T, R+Dr]
        new = torch.cat((latent, k_rot), -1)  # [B, T, R+Dr]
        if self.attend_kernel is not None and step.kept is None and step.select is None and step.mass is None \
                and cache["latent"].dtype in CACHE_TYPES:  # what the native job reads
            KVCache.write(cache["latent"], new, step)
            out = self.attend_kernel(query, step, cache["latent"])  # [B, N, T, R]
        else:
            out = self._attend(query, new, step, cache)
        if self.up_kernels is not None:
            out = self.up_kernels[1](out.transpose(1, 2))  # [B, T, N, R] -> [B, T, N, Dv]
        else:
            out = _per_head(out, self.up_weights()[1]).transpose(1, 2)  # [B, T, N, Dv]
        return self.o_proj(out.reshape(b, t, n * self.v_dim))

    def _attend(self, query: torch.Tensor, new: torch.Tensor, step: Step, cache: dict) -> torch.Tensor:
        """query [B, N, T, R+Dr] over the cache with new [B, T, R+Dr] stored, in torch -> [B, N, T, R]."""
        r, t = self.rank, query.shape[2]
        cached = KVCache.write_read(cache["latent"], new, step)  # [B, S, R+Dr]
        cached = cached.to(query.dtype)[:, None]  # one shared "head": [B, 1, S, R+Dr]
        mask = step.attn_mask()  # [B, 1, T, S]
        if step.select is not None:  # topk-blocks: each query reads only its best blocks of latents
            mask = select_blocks(query[:, None], cached, mask, step.select, step.select_size)
        if step.mass is not None:  # a retention policy ranks latent positions by the weight they get
            step.mass += attention_mass(query[:, None], cached, mask, self.scale, step.is_query).to(step.mass.device)
        if t > 16 and query.is_cuda:  # prefill on a GPU: SDPA's memory-efficient kernel takes the mask
            out = F.scaled_dot_product_attention(query, cached, cached[..., :r], attn_mask=mask, scale=self.scale,
                                                 enable_gqa=True)  # [B, N, T, R]
        else:  # the heads as rows against the one latent: no copy of the cache per head (a broadcast
            # matmul made one: 1.2 GiB and 3.7 s per step at 8K positions); prefill in blocks of keys
            out = attend_blocked(query[:, None], cached, cached[..., :r], mask, self.scale)[:, 0]  # [B, N, T, R]
        return out

    def up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value up-projections per head: [N, Dn, R] and [N, R, Dv] (none once the
        native products hold them: up_kernels)."""
        if self.kv_b_proj is None:
            raise HymoeError("MLA's up-projections live in the native per-head products only")
        if isinstance(self.kv_b_proj, UpProjection):
            return self.kv_b_proj.w_uk, self.kv_b_proj.w_uv_t
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim:].transpose(1, 2)

    def per_head_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The up-projections as each head's rows, float32: keys' [N, R, Dn] (row r makes latent
        r of the absorbed query) and values' [N, Dv, R] (row j makes output j from the latent)."""
        w_uk, w_uv_t = self.up_weights()
        return w_uk.transpose(1, 2).float().contiguous(), w_uv_t.transpose(1, 2).float().contiguous()

    def after_load(self) -> None:
        """kv_b_proj's weight split into the per-head layouts the absorbed products read whole: the
        strided slices of [N*(Dn+Dv), R] were copied by every CPU matmul (deepseek-v3, 2 cores: 9 ms
        a layer per decode step, 1.3 ms contiguous). Same bytes, no second copy kept."""
        if self.kv_b_proj is not None and not isinstance(self.kv_b_proj, UpProjection):
            w_uk, w_uv_t = self.up_weights()
            self.kv_b_proj = UpProjection(w_uk.contiguous(), w_uv_t.contiguous())


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [B, N, T, I] times each head's w [N, I, O] -> [B, N, T, O], as one batched matmul over heads
    (broadcasting w over B would copy it for B > 1)."""
    b, n, t, i = x.shape
    rows = x.transpose(0, 1).reshape(n, b * t, i)  # [N, B*T, I] (a small copy)
    return torch.bmm(rows, w).view(n, b, t, -1).transpose(0, 1)


class UpProjection(nn.Module):
    """MLA's kv_b_proj after loading: the same weight as w_uk [N, Dn, R] and w_uv_t [N, R, Dv]; called,
    it expands latents as the linear it replaces ([..., R] -> [..., N*(Dn+Dv)])."""

    def __init__(self, w_uk: torch.Tensor, w_uv_t: torch.Tensor):
        super().__init__()
        self.w_uk = nn.Parameter(w_uk, requires_grad=False)
        self.w_uv_t = nn.Parameter(w_uv_t, requires_grad=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        k = torch.einsum("...r,ndr->...nd", latent, self.w_uk)  # [..., N, Dn]
        v = torch.einsum("...r,nrv->...nv", latent, self.w_uv_t)  # [..., N, Dv]
        return torch.cat((k, v), -1).flatten(-2)
