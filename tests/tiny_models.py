"""Tiny random models built with transformers' own classes, saved with save_pretrained.

Router weights are scaled up so top-k choices sit far from ties: a mismatch then means a bug.
"""
from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, max_position_embeddings=512,
              tie_word_embeddings=False)

CONFIGS = {
    "deepseek_v3": dict(
        cls="DeepseekV3", num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=4, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, q_lora_rank=None, kv_lora_rank=32, qk_rope_head_dim=8,
        qk_nope_head_dim=16, v_head_dim=16, first_k_dense_replace=1, routed_scaling_factor=2.5),
    "deepseek_v3_qlora_yarn": dict(
        cls="DeepseekV3", num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=4, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
        n_group=2, topk_group=1, q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=16,
        qk_nope_head_dim=8, v_head_dim=12, first_k_dense_replace=2, routed_scaling_factor=1.5,
        norm_topk_prob=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=128, mscale=0.707, mscale_all_dim=0.707,
                             beta_fast=32, beta_slow=1)),
    "deepseek_v3_groups8": dict(
        cls="DeepseekV3", num_hidden_layers=2, intermediate_size=96, moe_intermediate_size=16,
        num_key_value_heads=4, n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=8,
        n_group=8, topk_group=4, q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=0),
    "deepseek_v3_no_groups_half_rope_bias": dict(
        cls="DeepseekV3", num_hidden_layers=2, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        n_group=1, topk_group=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=16, v_head_dim=8, first_k_dense_replace=0, rope_interleave=False,
        attention_bias=True, tie_word_embeddings=True),
    "deepseek_v2": dict(
        cls="DeepseekV2", num_hidden_layers=2, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, first_k_dense_replace=1,
        q_lora_rank=None, topk_method="group_limited_greedy", n_group=2, topk_group=1),
    "qwen3_moe": dict(
        cls="Qwen3Moe", num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        mlp_only_layers=[1]),
    "qwen3_moe_yarn_sparse_step": dict(
        cls="Qwen3Moe", num_hidden_layers=4, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=1, num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
        decoder_sparse_step=2, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=1e6, factor=2.0,
                             original_max_position_embeddings=256)),
    "qwen2_moe": dict(
        cls="Qwen2Moe", num_hidden_layers=2, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=48),
    "mixtral": dict(
        cls="Mixtral", num_hidden_layers=2, intermediate_size=48, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2),
    "mixtral_head_dim": dict(
        cls="Mixtral", num_hidden_layers=2, intermediate_size=64, num_key_value_heads=1, head_dim=24,
        num_local_experts=6, num_experts_per_tok=3),
    "mixtral_sliding_window": dict(
        cls="Mixtral", num_hidden_layers=2, intermediate_size=48, num_key_value_heads=4,
        num_local_experts=8, num_experts_per_tok=2, sliding_window=7),
    "qwen2_moe_sliding_layers": dict(
        cls="Qwen2Moe", num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32,
        num_key_value_heads=4, num_experts=8, num_experts_per_tok=4, shared_expert_intermediate_size=48,
        norm_topk_prob=True, use_sliding_window=True, sliding_window=6, max_window_layers=2),
}


def make_model(name: str, out_dir, seed: int = 0, router_scale: float = 8.0):
    """Build, perturb and save one tiny model; returns the HF model (float32, eager attention)."""
    spec = dict(CONFIGS[name])
    cls = spec.pop("cls")
    cfg = getattr(transformers, f"{cls}Config")(**{**COMMON, **spec})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).float().eval()
    perturb(model, router_scale)
    model.config._attn_implementation = "eager"
    model.save_pretrained(out_dir)
    return model


def perturb(model, router_scale: float = 8.0, weight_scale: float = 4.0) -> None:
    """Move a random init away from its easy cases, in place."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)  # norms away from 1 so their weights matter
            elif pname.endswith("mlp.gate.weight"):
                p.mul_(router_scale)
            elif "experts" in pname or "proj" in pname:
                p.mul_(weight_scale)  # random init is tiny; bigger weights make layers matter
        for mname, buf in model.named_buffers():
            if mname.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.1)
