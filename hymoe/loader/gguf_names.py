"""Hugging Face checkpoint names <-> GGUF tensor names, and the layout changes llama.cpp makes.

The name table is gguf-py's own (`gguf.get_tensor_name_map`), the one llama.cpp's converter
uses. Two tensors also change layout on the way to GGUF:
- llama (Mixtral): q/k rows are permuted so llama.cpp's pairwise RoPE equals HF's half rotation;
- deepseek2: kv_b_proj is split into k_b (transposed) and v_b for absorbed MLA.
"""
from __future__ import annotations

import re

import gguf
import torch

from hymoe.config import ModelConfig
from hymoe.errors import HymoeError
from hymoe.loader.gguf_meta import GGUF_ARCH

_ARCH = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
_BIAS = re.compile(r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.e_score_correction_bias$")


class GGUFNames:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.arch = GGUF_ARCH[cfg.model_type]
        self._map = gguf.get_tensor_name_map(_ARCH[self.arch], cfg.num_layers)

    def gguf(self, hf_name: str) -> str:
        m = _BIAS.match(hf_name)
        if m:
            return f"blk.{m[1]}.exp_probs_b.bias"
        name = self._map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise HymoeError(f"no GGUF name for tensor {hf_name} in architecture {self.arch}")
        return name

    # llama: HF rotates halves of each head, llama.cpp rotates adjacent pairs
    def is_permuted(self, hf_name: str) -> int:
        """0, or the head count whose rows llama.cpp permutes in this tensor."""
        if self.arch != "llama":
            return 0
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return self.cfg.num_heads
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return self.cfg.num_kv_heads
        return 0


def permute_rows(w: torch.Tensor, heads: int, to_gguf: bool) -> torch.Tensor:
    """Reorder each head's rows between HF's half layout and llama.cpp's pair layout."""
    d = w.shape[0] // heads
    split = (heads, 2, d // 2) if to_gguf else (heads, d // 2, 2)
    return w.reshape(*split, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def split_kv_b(kv_b: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_b_proj [n*(nope+v), R] -> k_b [n, R, nope], v_b [n, v, R] (llama.cpp's split)."""
    kv = kv_b.view(cfg.num_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
    k_b, v_b = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=1)
    return k_b.transpose(1, 2).contiguous(), v_b.contiguous()


def merge_kv_b(k_b: torch.Tensor, v_b: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    n, r = cfg.num_heads, cfg.kv_lora_rank
    if tuple(k_b.shape) != (n, r, cfg.qk_nope_head_dim) or tuple(v_b.shape) != (n, cfg.v_head_dim, r):
        raise HymoeError(f"attn_k_b {list(k_b.shape)} / attn_v_b {list(v_b.shape)} disagree with the metadata "
                         f"(heads {n}, kv_lora_rank {r}, nope {cfg.qk_nope_head_dim}, v {cfg.v_head_dim})")
    return torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(-1, r)
