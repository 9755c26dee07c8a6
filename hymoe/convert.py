"""`hymoe convert HF_DIR OUT.gguf`: a Hugging Face MoE checkpoint -> a GGUF file llama.cpp loads.

The checkpoint is loaded with hymoe's own loader (so every HF naming variant works), then each
tensor is renamed with gguf-py's table, reshaped the way llama.cpp's converter does, and
quantized: experts, attention and the rest may each get their own type (the 1.58-bit dynamic
quants keep attention and shared experts at higher precision). Norms, biases and routers stay
F32, as llama.cpp keeps them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import quantize
from tqdm import tqdm

from hymoe.errors import HymoeError
from hymoe.experts.torch_backend import TorchExperts
from hymoe.layers.moe import MoE
from hymoe.loader.gguf_meta import GGUF_ARCH, write_metadata
from hymoe.loader.gguf_names import GGUFNames, permute_rows, split_kv_b
from hymoe.loader.gguf_tokenizer import write_tokenizer
from hymoe.loader.open import open_model
from hymoe.loader.weights import load_weights
from hymoe.models import build_model
from hymoe.quant.formats import qtype
from hymoe.quant.kquants import QUANTIZERS

log = logging.getLogger("hymoe")
CONVERT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "TQ2_0")
_KEEP_F32 = ("_norm.weight", ".bias", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
# file type written in general.file_type (llama.cpp's LLAMA_FTYPE numbering)
_FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32, "TQ2_0": 37}


def _check_type(t: str | None) -> str | None:
    if t is None:
        return None
    if t.upper() not in CONVERT_TYPES:
        raise HymoeError(f"hymoe convert has no type {t!r} (use one of {', '.join(CONVERT_TYPES)})")
    return t.upper()


def encode(w: torch.Tensor, fmt: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """float [..., n] -> (GGUF bytes or float array, the type written)."""
    x = w.detach().float().contiguous().numpy()
    if fmt == "F32":
        return x, gguf.GGMLQuantizationType.F32
    if fmt == "F16":
        return x.astype(np.float16), gguf.GGMLQuantizationType.F16
    if fmt in QUANTIZERS:
        return QUANTIZERS[fmt](x), qtype(fmt)
    return quantize(x, qtype(fmt)), qtype(fmt)


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


def _dense_tensors(model, names: GGUFNames):
    """(gguf name, tensor) for every non-expert parameter, in llama.cpp's layout."""
    cfg = model.cfg
    for pname, p in model.named_parameters():
        if pname == "lm_head.weight" and cfg.is_tied_embeddings:
            continue
        hf = model.checkpoint_name(pname)
        if hf.endswith("kv_b_proj.weight"):
            k_b, v_b = split_kv_b(p.data, cfg)
            base = names.gguf(hf)
            yield base.replace("attn_kv_b", "attn_k_b"), k_b
            yield base.replace("attn_kv_b", "attn_v_b"), v_b
            continue
        heads = names.is_permuted(hf)
        t = permute_rows(p.data, heads, to_gguf=True) if heads else p.data
        if hf.endswith("shared_expert_gate.weight"):
            t = t.reshape(-1)
        yield names.gguf(hf), t


def convert(hf_dir: str | Path, out: str | Path, type: str = "Q8_0", experts_type: str | None = None,
            attn_type: str | None = None, progress: bool = True) -> Path:
    base = _check_type(type)
    plan = _Plan(base, _check_type(experts_type) or base, _check_type(attn_type) or base)
    if not Path(hf_dir).is_dir():
        raise HymoeError(f"{hf_dir}: hymoe convert reads a Hugging Face model directory")
    files = open_model(hf_dir)
    cfg = files.config
    with torch.device("meta"):
        model = build_model(cfg)
    load_weights(model, files.source, torch.float32, "cpu", progress=False)
    names = GGUFNames(cfg)
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, GGUF_ARCH[cfg.model_type])
    w.add_name(Path(hf_dir).name)
    write_metadata(w, cfg)
    w.add_file_type(_FTYPE[base])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if files.tokenizer is not None:
        write_tokenizer(w, files.tokenizer.hf, cfg.vocab_size)
    work = list(_dense_tensors(model, names))
    for prefix, module in model.named_modules():
        if isinstance(module, MoE):
            assert isinstance(module.experts, TorchExperts)
            ex = module.experts
            work += zip(map(names.gguf, model.stacked_expert_names(prefix)), (ex.gate, ex.up, ex.down))
    for name, t in tqdm(work, desc=f"converting to {base}", unit="tensor", disable=not progress):
        data, qt = encode(t, plan.type_for(name, tuple(t.shape)))
        w.add_tensor(name, data, raw_dtype=qt)
    if plan.fallbacks:
        log.warning("hymoe: rows not divisible into blocks were stored in another type: %s",
                    ", ".join(f"{k} x{v}" for k, v in plan.fallbacks.items()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.rename(out)  # a half-written file never carries the final name
    return out
