"""Random-weight models at real architectures' full width, for end-to-end benchmarks.

No 671B checkpoint fits here, but a few of its layers at full width do, and their per-layer costs
scale to the whole depth. Routed experts are random GGUF blocks (in place, as a GGUF file's are);
the other matrices random bf16, or random blocks of a dense format. Generated once per source and shared by every placement loaded from it.
"""
from __future__ import annotations

import math

import torch

from hymoe.bench.experts import random_experts
from hymoe.config import from_hf_dict
from hymoe.errors import HymoeError
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.experts.torch_backend import TorchExperts
from hymoe.loader.open import ModelFiles
from hymoe.models import build_model

# config.json fields of the real models; num_hidden_layers and the dense prefix are set per run
CONFIGS = {
    "deepseek-v3": dict(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, routed_scaling_factor=2.5,
        norm_topk_prob=True, max_position_embeddings=163840, rope_theta=10000.0, first_k_dense_replace=1,
        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                          mscale=1.0, mscale_all_dim=1.0)),
    # DeepSeek-V3's architecture (MLA, grouped routing, a shared expert) at toy width: every code path
    # of the full shape in seconds on a CPU (scripts/gpu_check.py --dry-run); rows split into 256-blocks
    "deepseek-v3-tiny": dict(
        model_type="deepseek_v3", vocab_size=1024, hidden_size=256, intermediate_size=512,
        moe_intermediate_size=256, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, q_lora_rank=256, kv_lora_rank=256,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, routed_scaling_factor=2.5,
        norm_topk_prob=True, max_position_embeddings=8192, rope_theta=10000.0, first_k_dense_replace=1,
        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                          mscale=1.0, mscale_all_dim=1.0)),
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960, rope_theta=1e6),
}


def random_tensor(shape, dtype: torch.dtype = torch.bfloat16, std: float = 0.02) -> torch.Tensor:
    """Normal values: a 16M-element random tile repeated (generating billions of fresh values would
    take minutes; a tile this large still defeats every cache)."""
    n = math.prod(shape)
    tile = (torch.randn(min(n, 1 << 24)) * std).to(dtype)
    return tile.repeat(-(-n // tile.numel()))[:n].view(shape)


class RandomExperts(DequantExperts):
    """Random GGUF blocks; as float weights (GPU layers, hot experts) fresh random values, since
    decoding random blocks would cost minutes at this size and mean nothing."""

    def to_torch(self, dtype: torch.dtype) -> TorchExperts:
        e, h, i = self.gate.shape[0], self.hidden, self.inter
        return TorchExperts(*(random_tensor((e, *s), dtype) for s in ((i, h), (i, h), (h, i))))


class RandomSource:
    """A TensorSource of random tensors with the shapes a model of `cfg` asks for."""

    experts_type = RandomExperts

    def __init__(self, cfg, experts_format: str, seed: int = 0, dense_format: str | None = None):
        with torch.device("meta"):
            model = build_model(cfg)
        self.shapes = {model.checkpoint_name(n): p.shape for n, p in model.named_parameters()}
        self.fmt, self.seed, self.cache = experts_format, seed, {}
        self.dense_format = dense_format  # matrices as random blocks of this format (None: bf16)
        e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.dims = ((e, i, h), (e, i, h), (e, h, i))  # (experts, rows, row length) of gate, up, down

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def keys(self):
        return self.shapes.keys()

    def describe(self, name: str) -> tuple[torch.dtype, torch.Size]:
        """For ModelFiles.stored_tensors (the model card's counts): every tensor as its float shape."""
        return torch.bfloat16, self.shapes[name]

    def get(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            shape = self.shapes[name]
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.bfloat16)  # unit norms keep activations in range
            elif name.endswith("e_score_correction_bias"):
                t = torch.zeros(shape)
            else:
                t = random_tensor(shape)
            self.cache[name] = t
        return self.cache[name]

    def raw(self, name: str):
        """A matrix as random blocks of the dense format (assembly keeps them, as a GGUF file's)."""
        shape = self.shapes.get(name)
        if self.dense_format is None or shape is None or len(shape) != 2 or shape[1] % 256:
            return None
        if name not in self.cache:
            self.cache[name] = random_experts(self.dense_format, 1, shape[0], shape[1], self.seed + len(self.cache))
        return self.dense_format, self.cache[name].view(shape[0], -1)

    def packed_experts(self, names: list[str]):
        if names[0] not in self.cache:  # uint8 [E, rows * row_bytes] for gate, up, down
            self.cache[names[0]] = [random_experts(self.fmt, e, rows, n, self.seed + len(self.cache) + j)
                                    for j, (e, rows, n) in enumerate(self.dims)]
        return self.cache[names[0]], (self.fmt,) * 3


def random_model(name: str, num_layers: int, experts_format: str, dense_format: str | None = None) -> ModelFiles:
    """A ModelFiles of `num_layers` layers of model `name` with random weights (no tokenizer); the
    matrices outside the experts as random `dense_format` blocks, or bf16 without one."""
    if name not in CONFIGS:
        raise HymoeError(f"unknown model shape {name!r} (use one of {', '.join(CONFIGS)})")
    if num_layers < 1:
        raise HymoeError("--layers must be at least 1")
    d = dict(CONFIGS[name], num_hidden_layers=num_layers)
    if "first_k_dense_replace" in d:
        d["first_k_dense_replace"] = min(d["first_k_dense_replace"], num_layers - 1)
    cfg = from_hf_dict(d)
    return ModelFiles(cfg, RandomSource(cfg, experts_format.upper(), dense_format=dense_format and dense_format.upper()),
                      None, torch.bfloat16)
