"""Qwen2-MoE and Qwen3-MoE: GQA (Qwen3: q/k RMSNorm), softmax top-k, Qwen2's gated shared expert."""
from torch import nn

from hymoe.config import ModelConfig
from hymoe.layers.attention import GQAttention
from hymoe.layers.mlp import MLP
from hymoe.layers.moe import MoE
from hymoe.layers.router import Router
from hymoe.layers.rope import Rope
from hymoe.models.decoder import Decoder, DecoderLayer


def build_layer(cfg: ModelConfig, i: int, rope: Rope) -> DecoderLayer:
    if cfg.moe_layers[i]:
        shared = gate = None
        if cfg.shared_intermediate_size:
            shared = MLP(cfg.hidden_size, cfg.shared_intermediate_size)
            gate = nn.Linear(cfg.hidden_size, 1, bias=False) if cfg.is_shared_expert_gated else None
        mlp: nn.Module = MoE(Router(cfg), shared, gate)
    else:
        mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
    return DecoderLayer(cfg, GQAttention(cfg, rope, is_sliding=bool(cfg.sliding_layers) and cfg.sliding_layers[i]), mlp)


class QwenMoeModel(Decoder):
    renames = ((".mlp.shared_experts.", ".mlp.shared_expert."),)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, build_layer)
