"""A GGUF file of a real model's shape with random weights, which hymoe and llama.cpp both load,
so `bench e2e --peer llama.cpp` times the two engines on the same bytes.

Weights are random blocks with sane scales in the chosen formats (experts and the dense part
apart), norms one, routers and biases F32 as llama.cpp's converter keeps them. The vocabulary is a
SentencePiece-style one of synthetic pieces (benchmarks feed token ids, never text).
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES
import torch
from tqdm import tqdm

from hymoe.bench.experts import fill_random
from hymoe.bench.synthetic import CONFIGS
from hymoe.config import from_hf_dict
from hymoe.errors import HymoeError
from hymoe.layers.moe import MoE
from hymoe.loader.gguf_meta import GGUF_ARCH, write_metadata
from hymoe.loader.gguf_names import GGUFNames
from hymoe.models import build_model
from hymoe.quant.formats import qtype, row_bytes

_KEEP_F32 = ("_norm.weight", ".bias", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "exp_probs_b.bias")


def write_vocab(w: gguf.GGUFWriter, size: int) -> None:
    """A SentencePiece-style vocabulary of `size` pieces: <unk>, <s>, </s>, the 256 byte pieces, then
    synthetic pieces ranked by score."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    if size < len(tokens) + 1:
        raise HymoeError(f"a vocabulary of {size} is too small (at least {len(tokens) + 1})")
    pieces = [f"\u2581p{i}" for i in range(size - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens + pieces)
    w.add_token_scores([0.0] * len(tokens) + [-float(i) for i in range(len(pieces))])
    w.add_token_types([int(t) for t in types] + [int(gguf.TokenType.NORMAL)] * len(pieces))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _fit(fmt: str, n: int) -> str:
    """fmt, or Q8_0 for rows that do not split into its blocks (as llama.cpp's quantizer falls back)."""
    return fmt if fmt == "F32" or n % GGML_QUANT_SIZES[qtype(fmt)][0] == 0 else "Q8_0"


def _tensors(cfg, experts_format: str, dense_format: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, torch-order shape, format) of every tensor of a model of cfg."""
    with torch.device("meta"):
        model = build_model(cfg)
    names, out = GGUFNames(cfg), []
    for pname, p in model.named_parameters():
        hf = model.checkpoint_name(pname)
        if hf.endswith("kv_b_proj.weight"):  # llama.cpp's split: k_b [N, R, Dn], v_b [N, Dv, R]
            base, n, r = names.gguf(hf), cfg.num_heads, cfg.kv_lora_rank
            out += [(base.replace("attn_kv_b", "attn_k_b"), (n, r, cfg.qk_nope_head_dim), dense_format),
                    (base.replace("attn_kv_b", "attn_v_b"), (n, cfg.v_head_dim, r), dense_format)]
            continue
        name, shape = names.gguf(hf), tuple(p.shape)
        out.append((name, shape, "F32" if len(shape) == 1 or name.endswith(_KEEP_F32) else dense_format))
    e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    for prefix, module in model.named_modules():
        if isinstance(module, MoE):
            for name, shape in zip(model.stacked_expert_names(prefix), ((e, i, h), (e, i, h), (e, h, i))):
                out.append((names.gguf(name), shape, experts_format))
    return [(name, shape, _fit(fmt, shape[-1])) for name, shape, fmt in out]


def _data(name: str, shape: tuple[int, ...], fmt: str, seed: int) -> np.ndarray:
    if fmt == "F32":
        if name.endswith("_norm.weight"):
            return np.ones(shape, dtype=np.float32)
        if name.endswith(".bias"):
            return np.zeros(shape, dtype=np.float32)
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 0.02
    out = np.empty((*shape[:-1], row_bytes(fmt, shape[-1])), dtype=np.uint8)
    fill_random(out.reshape(-1), fmt, seed)
    return out


def _config(shape: str, num_layers: int, num_experts: int | None = None, vocab_size: int | None = None):
    if shape not in CONFIGS:
        raise HymoeError(f"unknown model shape {shape!r} (use one of {', '.join(CONFIGS)})")
    d = dict(CONFIGS[shape], num_hidden_layers=num_layers)
    if num_experts:
        d["n_routed_experts" if "n_routed_experts" in d else "num_experts"] = num_experts
    if vocab_size:
        d["vocab_size"] = vocab_size
    if "first_k_dense_replace" in d:
        d["first_k_dense_replace"] = min(d["first_k_dense_replace"], num_layers - 1)
    return from_hf_dict(d)


def _write_header(path: Path, shape: str, cfg, tensors) -> gguf.GGUFWriter:
    """Metadata, vocabulary and tensor table written; the tensor data is the caller's."""
    w = gguf.GGUFWriter(path, GGUF_ARCH[cfg.model_type])
    w.add_name(f"random {shape} {cfg.num_layers} layers")
    write_metadata(w, cfg)
    write_vocab(w, cfg.vocab_size)
    for name, shp, fmt in tensors:
        if fmt == "F32":
            w.add_tensor_info(name, shp, np.dtype(np.float32), int(np.prod(shp)) * 4, qtype("F32"))
        else:
            rb = row_bytes(fmt, shp[-1])
            w.add_tensor_info(name, (*shp[:-1], rb), np.dtype(np.uint8), int(np.prod(shp[:-1])) * rb, qtype(fmt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w


def write_random_gguf(path: str | Path, shape: str, num_layers: int, experts_format: str = "Q4_K",
                      dense_format: str = "Q4_K", num_experts: int | None = None, vocab_size: int | None = None,
                      progress: bool = True) -> Path:
    """A GGUF file of model `shape` (bench/synthetic.py's CONFIGS) with num_layers layers of random weights."""
    cfg = _config(shape, num_layers, num_experts, vocab_size)
    tensors = _tensors(cfg, experts_format.upper(), dense_format.upper())
    path = Path(path)
    w = _write_header(path, shape, cfg, tensors)
    for j, (name, shp, fmt) in enumerate(tqdm(tensors, desc="writing", unit="tensor", disable=not progress)):
        w.write_tensor_data(_data(name, shp, fmt, seed=j))
    w.close()
    return path


def write_sparse_gguf(path: str | Path, shape: str, num_layers: int, experts_format: str = "Q4_K",
                      dense_format: str = "Q4_K") -> Path:
    """write_random_gguf's file with its data region left a hole (no disk, no time): for `hymoe
    inspect`, which reads headers only, e.g. to plan the memory of a --random model of this shape."""
    cfg = _config(shape, num_layers)
    tensors = _tensors(cfg, experts_format.upper(), dense_format.upper())
    path = Path(path)
    _write_header(path, shape, cfg, tensors).close()
    align = 32  # GGUF's default alignment of the data region and of each tensor in it
    end = sum(-(-(int(np.prod(shp)) * 4 if fmt == "F32" else int(np.prod(shp[:-1])) * row_bytes(fmt, shp[-1]))
                // align) * align for _, shp, fmt in tensors)
    with open(path, "r+b") as f:
        header = f.seek(0, 2)
        f.truncate(-(-header // align) * align + end)
    return path
