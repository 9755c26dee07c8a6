"""ModelConfig: one flat description of a MoE decoder, built from config.json (or, later, GGUF metadata).

Every model family maps its own field names onto these; layers read only ModelConfig.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hymoe.errors import HymoeError

# model_type in config.json -> hymoe family (one file under hymoe/models/ each)
FAMILIES = {
    "deepseek_v3": "deepseek",
    "deepseek_v2": "deepseek",
    "qwen3_moe": "qwen_moe",
    "qwen2_moe": "qwen_moe",
    "mixtral": "mixtral",
}


@dataclass(slots=True)
class RopeConfig:
    theta: float = 10000.0
    kind: str = "default"  # "default" | "yarn" | "linear"
    factor: float = 1.0
    original_max_position: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    is_interleaved: bool = False  # DeepSeek rotates (x0,x1),(x2,x3)...; others rotate halves


@dataclass(slots=True)
class ModelConfig:
    family: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    is_tied_embeddings: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()  # which layers use sliding_window
    # GQA attention
    is_qkv_bias: bool = False
    is_o_bias: bool = False
    is_qk_norm: bool = False
    # MLA attention (DeepSeek); kv_lora_rank > 0 selects it
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # feed-forward
    intermediate_size: int = 0  # dense layers
    moe_intermediate_size: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    shared_intermediate_size: int = 0  # 0 = no shared expert
    is_shared_expert_gated: bool = False  # Qwen2-MoE: sigmoid(gate(x)) * shared(x)
    moe_layers: tuple[bool, ...] = ()
    # routing
    scoring: str = "softmax"  # "softmax" | "sigmoid"
    topk_method: str = "greedy"  # "greedy" | "group_limited_greedy" (V2) | "noaux_tc" (V3)
    num_groups: int = 1
    group_score: str = "max"  # how groups are ranked: "max" (HF's V2) | "top2-sum" (V3, llama.cpp's deepseek2)
    topk_groups: int = 1
    is_norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0


def _rope_from_hf(d: dict) -> RopeConfig:
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "yarn", "linear"):
        raise HymoeError(f"unsupported rope type {kind!r} (supported: default, yarn, linear)")
    factor = params.get("factor")
    orig = params.get("original_max_position_embeddings") or d.get("original_max_position_embeddings")
    if kind == "yarn" and factor is None:
        factor = d["max_position_embeddings"] / orig
    return RopeConfig(
        theta=float(params.get("rope_theta", d.get("rope_theta", 10000.0))),
        kind=kind,
        factor=float(factor or 1.0),
        original_max_position=orig or d.get("max_position_embeddings"),
        beta_fast=float(params.get("beta_fast") or 32),
        beta_slow=float(params.get("beta_slow") or 1),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        attention_factor=params.get("attention_factor"),
        truncate=bool(params.get("truncate", True)),
    )


def _eos(d: dict) -> tuple[int, ...]:
    eos = d.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def from_hf_dict(d: dict) -> ModelConfig:
    """Map a Hugging Face config.json dict onto ModelConfig (a GGUF file's metadata comes here too),
    and refuse, in one line, what no model can be."""
    if not isinstance(d, dict):
        raise HymoeError(f"config.json holds a {type(d).__name__}, not an object")
    model_type = d.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise HymoeError(
            f"unsupported architecture {model_type!r}; supported model_type: {', '.join(FAMILIES)}"
        )
    if d.get("hidden_act", "silu") != "silu":
        raise HymoeError(f"unsupported hidden_act {d.get('hidden_act')!r}: hymoe's experts compute SwiGLU (silu)")
    layers = d.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 < layers <= 10_000:
        # checked first: it sizes the per-layer tuples built below
        raise HymoeError(f"config: num_layers must be a positive integer (at most 10000), not {layers!r}")
    try:
        cfg = _FROM_HF[model_type](d)
    except KeyError as e:
        raise HymoeError(f"config.json is missing the field {e.args[0]!r} needed for {model_type}") from None
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise HymoeError(f"config.json has a value of the wrong type or range for {model_type}: {e}") from None
    _validate(cfg)
    return cfg


def _validate(c: ModelConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HymoeError(f"config: {what}")

    sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
             "max_position_embeddings")
    for name in sizes:
        value = getattr(c, name)
        need(isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31,
             f"{name} must be a positive integer, not {value!r}")
    # every other count: a list or a string where a number belongs must not reach a comparison
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if f.type in ("int", "int | None") and not (value is None and f.type == "int | None"):
            need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31,
                 f"{f.name} must be a non-negative integer below 2^31, not {value!r}")
    # per-head sizes size tables built before any weight is read (rotary frequencies)
    for name in ("head_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        need(getattr(c, name) <= 1 << 16, f"{name} {getattr(c, name)} is larger than any model's")
    need(c.num_heads % c.num_kv_heads == 0, f"{c.num_heads} heads do not share {c.num_kv_heads} KV heads evenly")
    for name, value in (("rms_norm_eps", c.rms_norm_eps), ("rope theta", c.rope.theta),
                        ("rope factor", c.rope.factor), ("routed_scaling_factor", c.routed_scaling_factor)):
        need(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
             f"{name} must be a positive finite number, not {value!r}")
    need(c.num_experts > 0 and isinstance(c.num_experts_per_tok, int) and 0 < c.num_experts_per_tok <= c.num_experts,
         f"{c.num_experts_per_tok} experts per token of {c.num_experts}: need 1 to {c.num_experts}")
    need(c.moe_intermediate_size > 0, f"moe_intermediate_size must be positive, not {c.moe_intermediate_size!r}")
    need(c.scoring in ("softmax", "sigmoid"), f"unknown expert scoring {c.scoring!r} (softmax or sigmoid)")
    need(c.group_score in ("max", "top2-sum"), f"unknown group score {c.group_score!r} (max or top2-sum)")
    need(c.num_groups >= 1 and c.num_experts % c.num_groups == 0 and 1 <= c.topk_groups <= c.num_groups,
         f"{c.num_experts} experts in {c.num_groups} groups, {c.topk_groups} chosen: groups must divide the "
         "experts and at most all groups be chosen")
    need(c.topk_groups * (c.num_experts // c.num_groups) >= c.num_experts_per_tok,
         f"{c.topk_groups} groups of {c.num_experts // c.num_groups} experts hold fewer than the "
         f"{c.num_experts_per_tok} chosen per token")
    need(all(isinstance(i, int) and i >= 0 for i in c.eos_token_ids), f"eos_token_id {c.eos_token_ids!r}")
    # an id past the vocabulary never ends a sequence, or indexes past the embedding
    need(all(i < c.vocab_size for i in c.eos_token_ids),
         f"eos_token_id {list(c.eos_token_ids)} lies outside the vocabulary of {c.vocab_size} tokens")
    need(c.bos_token_id is None or c.bos_token_id < c.vocab_size,
         f"bos_token_id {c.bos_token_id} lies outside the vocabulary of {c.vocab_size} tokens")


def _num_experts(d: dict, *names: str) -> int:
    """transformers renamed the expert count across versions; accept every spelling."""
    for name in names + ("num_local_experts",):
        if d.get(name) is not None:
            return int(d[name])
    raise KeyError(names[0])


def _every(d: dict, name: str) -> int:
    """A layer period (moe_layer_freq, decoder_sparse_step): 0 would divide by zero below, unnamed."""
    v = d.get(name, 1)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise HymoeError(f"config: {name} must be a positive integer, not {str(v)[:40]}")
    return v


def _common(d: dict, family: str) -> dict:
    heads = d["num_attention_heads"]
    return dict(
        family=family,
        model_type=d["model_type"],
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        max_position_embeddings=d.get("max_position_embeddings", 4096),
        is_tied_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope=_rope_from_hf(d),
        intermediate_size=d.get("intermediate_size", 0),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=_eos(d),
    )


def _deepseek(d: dict) -> ModelConfig:
    n = d["num_hidden_layers"]
    is_v3 = d["model_type"] == "deepseek_v3"
    first_dense, freq = d.get("first_k_dense_replace", 0), _every(d, "moe_layer_freq")
    num_experts = _num_experts(d, "n_routed_experts")
    cfg = ModelConfig(
        **_common(d, "deepseek"),
        q_lora_rank=d.get("q_lora_rank"),
        kv_lora_rank=d["kv_lora_rank"],
        qk_nope_head_dim=d["qk_nope_head_dim"],
        qk_rope_head_dim=d["qk_rope_head_dim"],
        v_head_dim=d["v_head_dim"],
        moe_intermediate_size=d["moe_intermediate_size"],
        num_experts=num_experts,
        num_experts_per_tok=d["num_experts_per_tok"],
        shared_intermediate_size=d["moe_intermediate_size"] * (d.get("n_shared_experts") or 0),
        moe_layers=tuple(num_experts > 0 and i >= first_dense and i % freq == 0 for i in range(n)),
        scoring=d.get("scoring_func") or ("sigmoid" if is_v3 else "softmax"),
        topk_method=("noaux_tc" if is_v3 else d.get("topk_method") or "greedy"),
        num_groups=d.get("n_group") or 1,
        topk_groups=d.get("topk_group") or 1,
        group_score="top2-sum" if is_v3 else "max",
        # HF's DeepSeek-V2 port never renormalises; V3 follows the config.
        is_norm_topk_prob=bool(d.get("norm_topk_prob", True)) if is_v3 else False,
        routed_scaling_factor=float(d.get("routed_scaling_factor") or 1.0),
        is_o_bias=bool(d.get("attention_bias", False)),
    )
    cfg.rope.is_interleaved = bool(d.get("rope_interleave", True))
    cfg.head_dim = cfg.qk_rope_head_dim  # the rotary part is what RoPE sees
    return cfg


def _qwen_moe(d: dict) -> ModelConfig:
    n = d["num_hidden_layers"]
    step, only_mlp = _every(d, "decoder_sparse_step"), set(d.get("mlp_only_layers") or [])
    num_experts = _num_experts(d, "num_experts")
    is_qwen2 = d["model_type"] == "qwen2_moe"
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    if not window:
        sliding = ()
    elif d.get("layer_types"):
        sliding = tuple(t == "sliding_attention" for t in d["layer_types"])
    elif is_qwen2:  # transformers' default layer_types for Qwen2-MoE
        sliding = tuple(i % 2 == 0 and i < d.get("max_window_layers", 28) for i in range(n))
    else:
        sliding = (True,) * n
    return ModelConfig(
        **_common(d, "qwen_moe"),
        moe_intermediate_size=d["moe_intermediate_size"],
        num_experts=num_experts,
        num_experts_per_tok=d["num_experts_per_tok"],
        shared_intermediate_size=d.get("shared_expert_intermediate_size", 0) if is_qwen2 else 0,
        is_shared_expert_gated=is_qwen2,
        moe_layers=tuple(num_experts > 0 and i not in only_mlp and (i + 1) % step == 0 for i in range(n)),
        is_norm_topk_prob=bool(d.get("norm_topk_prob", False)),
        is_qkv_bias=bool(d.get("qkv_bias", True) if is_qwen2 else d.get("attention_bias", False)),
        is_o_bias=False if is_qwen2 else bool(d.get("attention_bias", False)),
        is_qk_norm=not is_qwen2,
        sliding_window=window or None,
        sliding_layers=sliding,
    )


def _mixtral(d: dict) -> ModelConfig:
    return ModelConfig(
        **_common(d, "mixtral"),
        moe_intermediate_size=d["intermediate_size"],
        num_experts=_num_experts(d, "num_local_experts"),
        num_experts_per_tok=d["num_experts_per_tok"],
        moe_layers=(True,) * d["num_hidden_layers"],
        is_norm_topk_prob=True,
        sliding_window=d.get("sliding_window") or None,
        sliding_layers=(True,) * d["num_hidden_layers"] if d.get("sliding_window") else (),
    )


_FROM_HF = {"deepseek_v3": _deepseek, "deepseek_v2": _deepseek, "qwen3_moe": _qwen_moe,
            "qwen2_moe": _qwen_moe, "mixtral": _mixtral}


def load_hf_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise HymoeError(f"{path}: no config.json in the model directory")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HymoeError(f"{path}: not valid JSON ({e})") from None
    return from_hf_dict(d)
