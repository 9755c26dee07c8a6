"""DeepSeek-V2/V3/R1: MLA attention, dense first layers, shared + routed experts with group-limited routing."""
from torch import nn

from hymoe.config import ModelConfig
from hymoe.layers.mla import MLAttention
from hymoe.layers.mlp import MLP
from hymoe.layers.moe import MoE
from hymoe.layers.router import Router
from hymoe.layers.rope import Rope
from hymoe.models.decoder import Decoder, DecoderLayer


def build_layer(cfg: ModelConfig, i: int, rope: Rope) -> DecoderLayer:
    if cfg.moe_layers[i]:
        shared = MLP(cfg.hidden_size, cfg.shared_intermediate_size) if cfg.shared_intermediate_size else None
        mlp: nn.Module = MoE(Router(cfg), shared)
    else:
        mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
    return DecoderLayer(cfg, MLAttention(cfg, rope), mlp)


class DeepseekModel(Decoder):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, build_layer)
