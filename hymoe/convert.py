"""`hymoe convert HF_DIR OUT.gguf`: a Hugging Face MoE checkpoint -> a GGUF file llama.cpp loads.

The model is built on the meta device and the checkpoint read through hymoe's own loader (so every
HF naming variant works), one tensor at a time: the header is written first, then each tensor is
read, renamed with gguf-py's table, reshaped the way llama.cpp's converter does, quantized and
written, so memory holds one expert projection, never the model. Experts, attention and the rest
may each get their own type (the 1.58-bit dynamic quants keep attention and shared experts at
higher precision). Norms, biases and routers stay F32, as llama.cpp keeps them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch
from tqdm import tqdm

from hymoe.errors import HymoeError
from hymoe.layers.moe import MoE
from hymoe.loader.gguf_meta import GGUF_ARCH, write_metadata
from hymoe.loader.gguf_names import GGUFNames, permute_rows, split_kv_b
from hymoe.loader.gguf_tokenizer import write_tokenizer
from hymoe.loader.open import open_model
from hymoe.models import build_model
from hymoe.models.assemble import checked, stacked_projection
from hymoe.quant.formats import qtype, row_bytes
from hymoe.quant.encode import encode

log = logging.getLogger("hymoe")
CONVERT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "TQ2_0", "IQ1_S")
_KEEP_F32 = ("_norm.weight", ".bias", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
# file type written in general.file_type (llama.cpp's LLAMA_FTYPE numbering)
_FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32, "TQ2_0": 37, "IQ1_S": 24}


def _check_type(t: str | None) -> str | None:
    if t is None:
        return None
    if t.upper() not in CONVERT_TYPES:
        raise HymoeError(f"hymoe convert has no type {t!r} (use one of {', '.join(CONVERT_TYPES)})")
    return t.upper()


def _fits(fmt: str, n: int) -> str:
    """The type a row of n values gets: fmt, or the nearest one whose blocks divide it."""
    for f in (fmt, "Q8_0", "F16"):
        if n % gguf.GGML_QUANT_SIZES[qtype(f)][0] == 0:
            return f
    return "F16"


class _Plan:
    def __init__(self, base: str, experts: str, attn: str):
        self.base, self.experts, self.attn = base, experts, attn
        self.fallbacks: dict[str, int] = {}

    def type_for(self, gguf_name: str, shape: tuple[int, ...]) -> str:
        if len(shape) == 1 or gguf_name.endswith(_KEEP_F32):
            return "F32"
        want = self.experts if "_exps." in gguf_name else self.attn if ".attn_" in gguf_name else self.base
        got = _fits(want, shape[-1])
        if got != want:
            self.fallbacks[f"{want}->{got}"] = self.fallbacks.get(f"{want}->{got}", 0) + 1
        return got


@dataclass
class _Spec:
    name: str  # GGUF name
    shape: tuple[int, ...]
    fetch: Callable[[], torch.Tensor]  # float tensor of `shape`, read from the checkpoint when written
    expert: Callable[[int], torch.Tensor] | None = None  # one expert of a stack, where stored apart

    def encoded(self, fmt: str) -> np.ndarray:
        """The tensor in fmt; a stack stored expert by expert is read and encoded one expert at a time
        (an FP8 checkpoint's experts would otherwise be a whole float32 stack)."""
        if self.expert is None:
            return encode(self.fetch(), fmt)
        return np.stack([encode(self.expert(j), fmt) for j in range(self.shape[0])])


def _dense_specs(model, source, names: GGUFNames):
    """Every non-expert parameter in llama.cpp's layout, read lazily from the checkpoint."""
    cfg = model.cfg

    def read(hf: str, shape) -> torch.Tensor:
        return checked(source, hf, torch.Size(shape)).float()

    for pname, p in model.named_parameters():
        if pname == "lm_head.weight" and cfg.is_tied_embeddings:
            continue
        hf, shape = model.checkpoint_name(pname), tuple(p.shape)
        if hf.endswith("kv_b_proj.weight"):
            base = names.gguf(hf)
            n, r = cfg.num_heads, cfg.kv_lora_rank
            yield _Spec(base.replace("attn_kv_b", "attn_k_b"), (n, r, cfg.qk_nope_head_dim),
                        lambda hf=hf, shape=shape: split_kv_b(read(hf, shape), cfg)[0])
            yield _Spec(base.replace("attn_kv_b", "attn_v_b"), (n, cfg.v_head_dim, r),
                        lambda hf=hf, shape=shape: split_kv_b(read(hf, shape), cfg)[1])
            continue
        heads = names.is_permuted(hf)
        if hf.endswith("shared_expert_gate.weight"):
            yield _Spec(names.gguf(hf), (shape[-1],), lambda hf=hf, shape=shape: read(hf, shape).reshape(-1))
        elif heads:
            yield _Spec(names.gguf(hf), shape,
                        lambda hf=hf, shape=shape, heads=heads: permute_rows(read(hf, shape), heads, to_gguf=True))
        else:
            yield _Spec(names.gguf(hf), shape, lambda hf=hf, shape=shape: read(hf, shape))


def _expert_specs(model, source, names: GGUFNames):
    cfg = model.cfg
    e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    for prefix, module in model.named_modules():
        if isinstance(module, MoE):
            for which, (name, shape) in enumerate(zip(model.stacked_expert_names(prefix), ((i, h), (i, h), (h, i)))):
                one = model.checkpoint_name(f"{prefix}.experts.{{}}.{model.expert_names[which]}.weight")
                expert = (lambda j, one=one, shape=shape: checked(source, one.format(j), torch.Size(shape))) \
                    if one.format(0) in source else None
                yield _Spec(names.gguf(name), (e, *shape), lambda prefix=prefix, which=which: stacked_projection(
                    model, source, prefix, which), expert)  # in the checkpoint's dtype: lossless, half of float32


def convert(hf_dir: str | Path, out: str | Path, type: str = "Q8_0", experts_type: str | None = None,
            attn_type: str | None = None, progress: bool = True) -> Path:
    """Stream a checkpoint into a GGUF file: one tensor (one expert projection) in memory at a time."""
    base = _check_type(type)
    plan = _Plan(base, _check_type(experts_type) or base, _check_type(attn_type) or base)
    if not Path(hf_dir).is_dir():
        raise HymoeError(f"{hf_dir}: hymoe convert reads a Hugging Face model directory")
    if not Path(out).parent.is_dir():
        raise HymoeError(f"{out}: the directory {Path(out).parent} does not exist")
    files = open_model(hf_dir)
    cfg = files.config
    with torch.device("meta"):
        model = build_model(cfg)
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, GGUF_ARCH[cfg.model_type])
    try:
        w.add_name(Path(hf_dir).name)
        write_metadata(w, cfg)  # refuses what the architecture cannot express, before any tensor
        names = GGUFNames(cfg)
        specs = list(_dense_specs(model, files.source, names)) + list(_expert_specs(model, files.source, names))
        types = [plan.type_for(s.name, s.shape) for s in specs]
        w.add_file_type(_FTYPE[base])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if files.tokenizer is not None:
            write_tokenizer(w, files.tokenizer.hf, cfg.vocab_size)
        for spec, fmt in zip(specs, types):
            if fmt in ("F32", "F16"):
                dt = np.dtype(np.float32 if fmt == "F32" else np.float16)
                w.add_tensor_info(spec.name, spec.shape, dt, int(np.prod(spec.shape)) * dt.itemsize, qtype(fmt))
            else:
                rb = row_bytes(fmt, spec.shape[-1])
                w.add_tensor_info(spec.name, (*spec.shape[:-1], rb), np.dtype(np.uint8),
                                  int(np.prod(spec.shape[:-1])) * rb, qtype(fmt))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for spec, fmt in tqdm(list(zip(specs, types)), desc=f"converting to {base}", unit="tensor",
                              disable=not progress):
            w.write_tensor_data(spec.encoded(fmt))
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    w.close()
    if plan.fallbacks:
        log.warning("hymoe: rows not divisible into blocks were stored in another type: %s",
                    ", ".join(f"{k} x{v}" for k, v in plan.fallbacks.items()))
    tmp.rename(out)  # a half-written file never carries the final name
    return out
