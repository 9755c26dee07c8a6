"""Assemble a model from named tensors: fill a model built on the meta device from a loader's
TensorSource, by the family's rename table.

Dense weights become parameters (a view of the mmap when the dtype already matches); each MoE
layer's experts are stacked into [E, ...] tensors and handed to an ExpertBackend.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from hymoe.errors import HymoeError
from hymoe.experts.base import ExpertBackend
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.experts.torch_backend import TorchExperts
from hymoe.layers.linear import QuantEmbedding, QuantLinear
from hymoe.layers.moe import MoE
from hymoe.loader.open import TensorSource
from hymoe.models.decoder import Decoder
from hymoe.quant.formats import row_bytes

FLOAT32_PARAMS = (".mlp.gate.weight", ".e_score_correction_bias")  # routing stays float32, as in the reference


def checked(source: TensorSource, name: str, shape: torch.Size) -> torch.Tensor:
    """source[name], or a clear error when its shape is not the one the config implies or it is not floats."""
    t = source.get(name)
    label = source.label(name) if hasattr(source, "label") else name
    if tuple(t.shape) != tuple(shape):
        raise HymoeError(f"tensor {label} has shape {list(t.shape)}, the model's config says {list(shape)}")
    if not t.dtype.is_floating_point:  # copied into a float parameter, integers or bools load as garbage, silently
        raise HymoeError(f"tensor {label} holds {str(t.dtype).removeprefix('torch.')} values, not floating point")
    return t


def _quantized(model: Decoder, source: TensorSource, name: str, dtype: torch.dtype) -> nn.Module | None:
    """The module owning weight `name` rebuilt around the source's blocks (zero copy), when the
    checkpoint stores it in a block format: a linear that is called (not read per head) or the
    embedding. None: the weight is loaded as floats."""
    if not hasattr(source, "raw") or not name.endswith(".weight"):
        return None
    module = model.get_submodule(name[: -len(".weight")])
    if type(module) not in (nn.Linear, nn.Embedding) or getattr(module, "keeps_float", False):
        return None
    stored = source.raw(model.checkpoint_name(name))
    if stored is None:
        return None
    fmt, raw = stored
    rows, n = module.weight.shape
    if raw.shape[0] != rows or raw.shape[1] != row_bytes(fmt, n):
        label = source.label(model.checkpoint_name(name)) if hasattr(source, "label") else name
        raise HymoeError(f"tensor {label} holds {raw.shape[0]} rows of {raw.shape[1]} bytes, the model's config "
                         f"says {rows} rows of {n} {fmt} values")
    quant = QuantEmbedding(rows, n, fmt, raw, dtype) if isinstance(module, nn.Embedding) else QuantLinear(n, rows, fmt, raw)
    quant.is_mapped = hasattr(source, "maps") and source.maps(raw)
    return quant


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def stacked_projection(model: Decoder, source: TensorSource, prefix: str, which: int,
                       dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """One MoE layer's gate (0), up (1) or down (2) for all experts: [E, rows, n], one copy.

    dtype None keeps the checkpoint's own dtype.
    """
    cfg = model.cfg
    e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    shape = ((i, h), (i, h), (h, i))[which]
    fused = model.checkpoint_name(f"{prefix}.experts.gate_up_proj")
    if fused in source:  # transformers >= 5 may save experts already stacked
        if which == 2:
            t = checked(source, model.checkpoint_name(f"{prefix}.experts.down_proj"), torch.Size((e, h, i)))
        else:
            t = checked(source, fused, torch.Size((e, 2 * i, h)))[:, which * i:(which + 1) * i]
        return t.to(device, dtype or t.dtype)
    proj = model.expert_names[which]
    out = None
    for j in range(e):  # one copy, filled expert by expert
        t = checked(source, model.checkpoint_name(f"{prefix}.experts.{j}.{proj}.weight"), torch.Size(shape))
        if out is None:
            out = torch.empty((e, *shape), dtype=dtype or t.dtype, device=device)
        out[j] = t
    return out


def _stack_experts(model: Decoder, source: TensorSource, prefix: str, dtype: torch.dtype,
                   device: torch.device) -> ExpertBackend:
    if hasattr(source, "packed_experts"):  # GGUF: the file's blocks, left in place for placement
        raw, formats = source.packed_experts(model.stacked_expert_names(prefix))
        kind = getattr(source, "experts_type", DequantExperts)  # a synthetic source brings its own
        experts = kind(*raw, formats, model.cfg.hidden_size, model.cfg.moe_intermediate_size)
        experts.is_mapped = hasattr(source, "maps") and all(source.maps(t) for t in raw)
        return experts
    return TorchExperts(*(stacked_projection(model, source, prefix, w, dtype, device) for w in range(3)))


def load_weights(model: Decoder, source: TensorSource, dtype: torch.dtype, device: torch.device | str = "cpu",
                 progress: bool = True) -> Decoder:
    device = torch.device(device)
    params = [n for n, _ in model.named_parameters()]
    moe_prefixes = [n for n, m in model.named_modules() if isinstance(m, MoE)]
    tied = model.cfg.is_tied_embeddings
    for name in tqdm(params + moe_prefixes, desc="loading", unit="tensor", disable=not progress, leave=False):
        if name in moe_prefixes:
            # experts stay in host memory; a placement that wants some on the GPU moves them
            model.get_submodule(name).experts = _stack_experts(model, source, name, dtype, torch.device("cpu"))
            continue
        if name == "lm_head.weight" and (tied or "lm_head.weight" not in source):
            if not tied:
                raise HymoeError("missing tensor lm_head.weight in the checkpoint")
            continue
        quantized = _quantized(model, source, name, dtype)
        if quantized is not None:  # the stored blocks, kept (layers/linear.py)
            _swap(model, name[: -len(".weight")], quantized)
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        expected = torch.Size([owner.out_features]) if isinstance(owner, QuantLinear) else model.get_parameter(name).shape
        t = checked(source, model.checkpoint_name(name), expected)
        target = torch.float32 if name.endswith(FLOAT32_PARAMS) else dtype
        _set_param(model, name, t.to(device, target))
        if name.endswith(".kv_b_proj.weight") and hasattr(source, "raw_up"):  # MLA's, also as the file's blocks
            mla = model.get_submodule(name[: -len(".kv_b_proj.weight")])
            mla.stored_up = source.raw_up(model.checkpoint_name(name))
    if tied:
        _tie(model)
    for module in list(model.modules()):  # layouts a layer computes from its loaded weights (MLA's)
        if hasattr(module, "after_load"):
            module.after_load()
    return model.eval()


def _tie(model: Decoder) -> None:
    embed = model.embed_tokens
    if isinstance(embed, QuantEmbedding):  # the head reads the embedding's blocks
        model.lm_head = QuantLinear(embed.embedding_dim, embed.num_embeddings, embed.fmt, embed.qweight)
        model.lm_head.is_mapped = embed.is_mapped
    else:
        model.lm_head.weight = embed.weight
