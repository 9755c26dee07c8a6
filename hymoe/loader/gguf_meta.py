"""GGUF metadata <-> ModelConfig, for the llama.cpp architectures hymoe runs.

Reading builds the same config.json dict a Hugging Face checkpoint has and hands it to
`config.from_hf_dict`, so a GGUF file and its HF directory give one ModelConfig. Writing is the
inverse, with the keys and conventions llama.cpp's own converter uses (so llama.cpp loads it).
"""
from __future__ import annotations

import gguf

from hymoe.config import ModelConfig, RopeConfig, from_hf_dict
from hymoe.errors import HymoeError

# hymoe model_type -> llama.cpp architecture name
GGUF_ARCH = {"deepseek_v3": "deepseek2", "deepseek_v2": "deepseek2", "qwen3_moe": "qwen3moe",
             "qwen2_moe": "qwen2moe", "mixtral": "llama"}
_SIGMOID, _SOFTMAX = int(gguf.ExpertGatingFuncType.SIGMOID), int(gguf.ExpertGatingFuncType.SOFTMAX)


class _Meta:
    def __init__(self, meta: dict, path):
        self.meta, self.path = meta, path
        self.arch = meta.get("general.architecture")
        if not isinstance(self.arch, str) or self.arch not in set(GGUF_ARCH.values()):
            raise HymoeError(f"{path}: unsupported GGUF architecture {str(self.arch)[:40]!r} "
                             f"(supported: {', '.join(sorted(set(GGUF_ARCH.values())))})")

    def get(self, key: str, default=None):
        v = self.meta.get(f"{self.arch}.{key}", default)
        if isinstance(v, list):  # per-layer arrays: hymoe needs one value for every layer
            if len(set(v)) != 1:
                raise HymoeError(f"{self.path}: {self.arch}.{key} " +
                                 (f"differs between layers ({v[:4]}...)" if v else "is an empty array"))
            v = v[0]
        return v

    def req(self, key: str):
        v = self.get(key)
        if v is None:
            raise HymoeError(f"{self.path}: GGUF metadata has no key '{self.arch}.{key}'")
        return v

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        """A count or size: an integer in a sane range, or a clear error."""
        v = self.req(key) if default is None else self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v < 1 << 31:
            raise HymoeError(f"{self.path}: GGUF metadata {self.arch}.{key} = {v!r} is not a valid size")
        return v

    def float(self, key: str, default: float | None = None) -> float:
        v = self.req(key) if default is None else self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise HymoeError(f"{self.path}: GGUF metadata {self.arch}.{key} = {v!r} is not a number")
        return float(v)


def _rope(m: _Meta) -> dict:
    kind = m.get("rope.scaling.type", "none")
    params = {"rope_theta": m.float("rope.freq_base", 10000.0)}
    if kind in ("yarn", "linear"):
        params.update(rope_type=kind, factor=m.float("rope.scaling.factor"))
    if kind == "yarn":
        params.update(original_max_position_embeddings=m.int("rope.scaling.original_context_length"),
                      beta_fast=m.float("rope.scaling.yarn_beta_fast", 32.0),
                      beta_slow=m.float("rope.scaling.yarn_beta_slow", 1.0))
        if m.get("rope.scaling.yarn_log_multiplier") is not None:
            # llama.cpp's converter stores 0.1 * mscale_all_dim for deepseek2
            mscale = m.float("rope.scaling.yarn_log_multiplier") / 0.1
            params.update(mscale=mscale, mscale_all_dim=mscale)
        if m.arch == "deepseek2":
            params.update(_deepseek2_yarn(params))
    elif kind not in ("none", "yarn", "linear"):
        raise HymoeError(f"{m.path}: unsupported rope scaling {kind!r}")
    return params


def _deepseek2_yarn(params: dict) -> dict:
    """llama.cpp's YaRN for deepseek2 files, said in transformers' terms (measured against llama.cpp)."""
    # deepseek2 reads no yarn_beta_* keys: llama.cpp's defaults hold whatever the file says
    fixed = dict(beta_fast=32.0, beta_slow=1.0)
    if not params.get("mscale_all_dim"):
        # No (or a zero) log multiplier: llama.cpp scales cos/sin by 1 + 0.1 ln(factor) and the
        # attention scale by its square; transformers does both for mscale unset, mscale_all_dim 1.
        # (An HF config without mscale_all_dim scales cos/sin only: there the two differ.)
        fixed.update(mscale=None, mscale_all_dim=1.0)
    return fixed


def _check_shapes(d: dict, tensors: dict, path) -> None:
    """The sizes the metadata claims must be the ones the tensors have (before anything is built)."""
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise HymoeError(f"{path}: missing tensor token_embd.weight")
    if tuple(embed.shape) != (d["vocab_size"], d["hidden_size"]):
        raise HymoeError(f"{path}: token_embd.weight has shape {list(embed.shape)}, the metadata says "
                         f"vocabulary {d['vocab_size']} x hidden {d['hidden_size']}")
    n = d["num_hidden_layers"]
    if f"blk.{n - 1}.attn_norm.weight" not in tensors or f"blk.{n}.attn_norm.weight" in tensors:
        raise HymoeError(f"{path}: the metadata says {n} layers; the tensors disagree")


def _gating(m, path) -> int:
    gating = m.get("expert_gating_func", _SOFTMAX)
    if gating not in (_SOFTMAX, _SIGMOID):
        raise HymoeError(f"{path}: unknown expert_gating_func {gating!r} (1: softmax, 2: sigmoid)")
    return gating


def hf_dict_from_gguf(meta: dict, tensors: dict, path) -> dict:
    """GGUF metadata -> a config.json-style dict for `from_hf_dict`."""
    m = _Meta(meta, path)
    tokens = meta.get("tokenizer.ggml.tokens")
    heads = m.int("attention.head_count")
    vocab = m.int("vocab_size") if m.get("vocab_size") is not None else len(tokens) if tokens else m.int("vocab_size")
    d = dict(
        vocab_size=vocab, hidden_size=m.int("embedding_length"), num_hidden_layers=m.int("block_count"),
        num_attention_heads=heads, num_key_value_heads=m.int("attention.head_count_kv", heads),
        rms_norm_eps=m.float("attention.layer_norm_rms_epsilon"),
        max_position_embeddings=m.int("context_length", 4096), intermediate_size=m.int("feed_forward_length", 0, 0),
        tie_word_embeddings="output.weight" not in tensors, rope_parameters=_rope(m), hidden_act="silu",
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )
    _check_shapes(d, tensors, path)
    n_experts, used = m.int("expert_count", 0, 0), m.int("expert_used_count", 0, 0)
    if not n_experts or not used or used > n_experts:
        raise HymoeError(f"{path}: {m.arch} with {n_experts} experts, {used} per token: hymoe runs MoE models only")
    if m.arch == "deepseek2":
        is_v3 = _gating(m, path) == _SIGMOID
        rope_dim = m.int("rope.dimension_count")
        # files from before the MLA split store per-head sizes in key_length/value_length
        k_len = m.int("attention.key_length_mla") if m.get("attention.key_length_mla") else m.int("attention.key_length")
        v_len = m.int("attention.value_length_mla") if m.get("attention.value_length_mla") else m.int("attention.value_length")
        if k_len <= rope_dim:
            raise HymoeError(f"{path}: key length {k_len} leaves no room beside the rotary {rope_dim}")
        groups = m.int("expert_group_count", 1)
        # llama.cpp adds exp_probs_b to the scores that choose experts whatever the gating (V3's rule)
        is_biased = is_v3 or any(name.endswith("exp_probs_b.bias") for name in tensors)
        d.update(model_type="deepseek_v3" if is_v3 else "deepseek_v2",
                 q_lora_rank=m.int("attention.q_lora_rank", 0, 0) or None, kv_lora_rank=m.int("attention.kv_lora_rank"),
                 qk_rope_head_dim=rope_dim, qk_nope_head_dim=k_len - rope_dim, v_head_dim=v_len,
                 moe_intermediate_size=m.int("expert_feed_forward_length"), n_routed_experts=n_experts,
                 num_experts_per_tok=used, n_shared_experts=m.int("expert_shared_count", 0, 0),
                 first_k_dense_replace=m.int("leading_dense_block_count", 0, 0),
                 routed_scaling_factor=m.float("expert_weights_scale", 1.0) or 1.0,
                 norm_topk_prob=bool(m.get("expert_weights_norm", False)), n_group=groups,
                 topk_group=m.int("expert_group_used_count", groups),
                 topk_method="noaux_tc" if is_biased else ("group_limited_greedy" if groups > 1 else "greedy"),
                 scoring_func="sigmoid" if is_v3 else "softmax", rope_interleave=True,
                 attention_bias="blk.0.attn_output.bias" in tensors, num_key_value_heads=heads)
        if n_experts % groups or d["topk_group"] > groups:
            raise HymoeError(f"{path}: {n_experts} experts do not split into {groups} groups (using {d['topk_group']})")
    elif m.arch in ("qwen3moe", "qwen2moe"):
        is_qwen3 = m.arch == "qwen3moe"
        d.update(model_type="qwen3_moe" if is_qwen3 else "qwen2_moe",
                 head_dim=m.int("attention.key_length", d["hidden_size"] // heads or 1),
                 moe_intermediate_size=m.int("expert_feed_forward_length"), num_experts=n_experts,
                 num_experts_per_tok=used, norm_topk_prob=is_qwen3,  # llama.cpp: fixed per architecture
                 attention_bias="blk.0.attn_q.bias" in tensors, qkv_bias="blk.0.attn_q.bias" in tensors,
                 shared_expert_intermediate_size=m.int("expert_shared_feed_forward_length", 0, 0),
                 use_sliding_window=False)
    else:  # llama with experts: Mixtral
        head_dim = m.int("attention.key_length", m.int("rope.dimension_count", d["hidden_size"] // heads or 1))
        d.update(model_type="mixtral", num_local_experts=n_experts, num_experts_per_tok=used, head_dim=head_dim,
                 intermediate_size=m.int("expert_feed_forward_length", m.int("feed_forward_length")),
                 sliding_window=None)
    if d["num_attention_heads"] % d["num_key_value_heads"]:
        raise HymoeError(f"{path}: {heads} attention heads do not split into {d['num_key_value_heads']} KV heads")
    return d


def config_from_gguf(meta: dict, tensors: dict, path) -> ModelConfig:
    d = hf_dict_from_gguf(meta, tensors, path)
    cfg = from_hf_dict(d)
    if cfg.family == "deepseek":
        # llama.cpp's deepseek2 routing (build_moe_ffn) differs from HF's DeepSeek-V2 port: it ranks
        # expert groups by their best two scores whatever the gating (HF's group_limited_greedy:
        # by the best one), and renormalises the weights when expert_weights_norm says so
        cfg.group_score = "top2-sum"
        cfg.is_norm_topk_prob = d["norm_topk_prob"]
    return cfg


def write_metadata(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """ModelConfig -> the architecture keys llama.cpp reads (writer created with GGUF_ARCH[...])."""
    if cfg.sliding_window and any(cfg.sliding_layers):
        raise HymoeError("this model uses sliding-window attention, which the GGUF architecture "
                         f"{GGUF_ARCH[cfg.model_type]} cannot express")
    r = cfg.rope
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(r.theta)
    w.add_vocab_size(cfg.vocab_size)
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if r.kind in ("yarn", "linear"):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN if r.kind == "yarn" else gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(r.factor)
    if r.kind == "yarn":
        w.add_rope_scaling_orig_ctx_len(r.original_max_position)
        w.add_rope_scaling_yarn_beta_fast(r.beta_fast)
        w.add_rope_scaling_yarn_beta_slow(r.beta_slow)
    if cfg.family == "deepseek":
        _write_deepseek(w, cfg)
    elif cfg.family == "qwen_moe":
        if not all(cfg.moe_layers):
            raise HymoeError(f"GGUF {GGUF_ARCH[cfg.model_type]} needs every layer to be MoE (mlp_only_layers "
                             "and decoder_sparse_step are not expressible)")
        if cfg.is_norm_topk_prob != (cfg.model_type == "qwen3_moe"):
            raise HymoeError(f"llama.cpp's {GGUF_ARCH[cfg.model_type]} fixes norm_topk_prob to "
                             f"{cfg.model_type == 'qwen3_moe'}; this model has {cfg.is_norm_topk_prob}")
        w.add_head_count_kv(cfg.num_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_feed_forward_length(cfg.intermediate_size or cfg.moe_intermediate_size)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if cfg.shared_intermediate_size:
            w.add_expert_shared_feed_forward_length(cfg.shared_intermediate_size)
    else:
        w.add_head_count_kv(cfg.num_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_feed_forward_length(cfg.moe_intermediate_size)


def _write_deepseek(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    dense = cfg.moe_layers.index(True) if True in cfg.moe_layers else cfg.num_layers
    if not all(cfg.moe_layers[dense:]):
        raise HymoeError("GGUF deepseek2 expresses only leading dense layers (moe_layer_freq must be 1)")
    if not cfg.rope.is_interleaved:
        raise HymoeError("GGUF deepseek2 rotates interleaved pairs; this model has rope_interleave=False")
    if cfg.num_groups > 1 and cfg.topk_groups < cfg.num_groups and cfg.group_score != "top2-sum":
        raise HymoeError("llama.cpp's deepseek2 ranks expert groups by their best two scores; this model's "
                         "group_limited_greedy ranks them by the best one")
    w.add_head_count_kv(1)  # MLA runs as MQA over the latent, as llama.cpp's converter writes it
    w.add_leading_dense_block_count(dense)
    w.add_feed_forward_length(cfg.intermediate_size)
    if cfg.q_lora_rank:
        w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    w.add_value_length(cfg.kv_lora_rank)
    w.add_key_length_mla(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    w.add_value_length_mla(cfg.v_head_dim)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_shared_count(cfg.shared_intermediate_size // cfg.moe_intermediate_size)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    w.add_expert_weights_norm(cfg.is_norm_topk_prob)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if cfg.scoring == "sigmoid"
                             else gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_expert_group_count(cfg.num_groups)
    w.add_expert_group_used_count(cfg.topk_groups)
    if cfg.rope.kind == "yarn":
        _write_deepseek2_yarn(w, cfg.rope)


def _write_deepseek2_yarn(w: gguf.GGUFWriter, r: RopeConfig) -> None:
    """The two YaRN rules llama.cpp's deepseek2 has (see _deepseek2_yarn); any other is refused."""
    if (r.beta_fast, r.beta_slow) != (32.0, 1.0):
        raise HymoeError(f"llama.cpp's deepseek2 fixes the YaRN betas to 32 and 1; this model has {r.beta_fast} "
                         f"and {r.beta_slow}")
    # transformers' cos/sin factor: 1 when mscale and mscale_all_dim cancel, else 1 + 0.1 ln(factor)
    is_cancelled = r.attention_factor is None and r.mscale and r.mscale == r.mscale_all_dim
    is_plain_rope = r.attention_factor == 1.0 or is_cancelled
    if r.mscale_all_dim and is_plain_rope:
        w.add_rope_scaling_yarn_log_mul(0.1 * r.mscale_all_dim)  # the converter's convention
    elif not (r.mscale_all_dim == 1.0 and r.attention_factor is None and not r.mscale):
        raise HymoeError(f"llama.cpp's deepseek2 cannot express this YaRN scaling (mscale {r.mscale}, "
                         f"mscale_all_dim {r.mscale_all_dim}, attention_factor {r.attention_factor})")
