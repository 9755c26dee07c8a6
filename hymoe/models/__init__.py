"""Model families, found by ModelConfig.family."""
from hymoe.config import ModelConfig
from hymoe.models.decoder import Decoder
from hymoe.models.deepseek import DeepseekModel
from hymoe.models.mixtral import MixtralModel
from hymoe.models.qwen_moe import QwenMoeModel

FAMILY_MODELS: dict[str, type[Decoder]] = {
    "deepseek": DeepseekModel,
    "qwen_moe": QwenMoeModel,
    "mixtral": MixtralModel,
}


def build_model(cfg: ModelConfig) -> Decoder:
    return FAMILY_MODELS[cfg.family](cfg)
