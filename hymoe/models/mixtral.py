"""Mixtral: GQA attention, every layer a top-2 softmax MoE, no shared expert."""
from hymoe.config import ModelConfig
from hymoe.layers.attention import GQAttention
from hymoe.layers.moe import MoE
from hymoe.layers.router import Router
from hymoe.layers.rope import Rope
from hymoe.models.decoder import Decoder, DecoderLayer


def build_layer(cfg: ModelConfig, i: int, rope: Rope) -> DecoderLayer:
    return DecoderLayer(cfg, GQAttention(cfg, rope, is_sliding=bool(cfg.sliding_layers) and cfg.sliding_layers[i]), MoE(Router(cfg)))


class MixtralModel(Decoder):
    renames = ((".mlp.", ".block_sparse_moe."),)
    expert_names = ("w1", "w3", "w2")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, build_layer)
