"""MLA's up-projection after loading: kv_b_proj's weight re-laid per head for the absorbed products
(layers/mla.py, UpProjection), the same values and bytes as the checkpoint's [N*(Dn+Dv), R] matrix."""
from __future__ import annotations

import torch

import hymoe
from hymoe.layers.mla import MLAttention, UpProjection
from tiny_models import make_model


def test_loaded_mla_keeps_the_up_projection_once_in_per_head_layouts(tmp_path, monkeypatch):
    """Where torch computes the products (a GPU, bfloat16): here float32 on the CPU without the
    native per-head products, which would take the weight over (test_native_mla)."""
    monkeypatch.setattr("hymoe.placement.kernels._mla_up_kernels", lambda engine, mla, copies: None)
    hf = make_model("deepseek_v3_qlora_yarn", tmp_path)
    llm = hymoe.load(tmp_path, dtype="float32", progress=False)
    layers = [m for m in llm.model.modules() if isinstance(m, MLAttention)]
    assert len(layers) == hf.config.num_hidden_layers
    for i, attn in enumerate(layers):
        up = attn.kv_b_proj
        assert isinstance(up, UpProjection)
        ref = hf.model.layers[i].self_attn.kv_b_proj.weight  # [N*(Dn+Dv), R]
        assert sum(p.numel() for p in up.parameters()) == ref.numel()  # no second copy kept
        assert up.w_uk.is_contiguous() and up.w_uv_t.is_contiguous()
        latent = torch.randn(5, attn.rank)
        torch.testing.assert_close(up(latent), latent @ ref.T, rtol=1e-5, atol=1e-5)
