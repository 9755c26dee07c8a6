"""Where each part of a loaded model computes: a transform applied to a plain model.

For now this places the routed experts: the portable torch backend, or the native CPU engine in
a chosen GGUF format (the checkpoint's float dtype in place, or quantized at load time).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hymoe.errors import HymoeError
from hymoe.experts import native
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.experts.torch_backend import TorchExperts
from hymoe.layers.moe import MoE
from hymoe.quant.formats import FLOAT_DTYPES, NATIVE_FORMATS, qtype

log = logging.getLogger("hymoe")
_FLOAT_FORMATS = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
# formats gguf-py can write from float weights (the K-quants need hymoe's own quantizers)
_GGUF_PY_QUANTIZERS = ("Q8_0", "Q4_0", "TQ2_0", "TQ1_0")


def _as_format(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """[E, rows, n] float -> uint8 [E, rows * row_bytes] in fmt (zero-copy for the float formats)."""
    if fmt in FLOAT_DTYPES:
        w = w.to(FLOAT_DTYPES[fmt]).contiguous()
        return w.view(torch.uint8).reshape(w.shape[0], -1)
    if fmt not in _GGUF_PY_QUANTIZERS:
        raise HymoeError(f"quantizing experts to {fmt} at load time is not supported yet "
                         f"(use one of {', '.join(_GGUF_PY_QUANTIZERS)}, or a GGUF file)")
    from gguf.quants import quantize

    e, rows, n = w.shape
    q = quantize(w.float().reshape(e * rows, n).numpy(), qtype(fmt))
    return torch.from_numpy(np.ascontiguousarray(q)).reshape(e, -1)


PLACEMENTS = ("cpu", "hybrid", "layers:N", "gpu")


@dataclass(frozen=True)
class Placement:
    """Where each part of the model computes. `gpu` is the CUDA device, or on a CPU-only machine the
    CPU standing in for it, so the same orchestration runs (and is tested) everywhere."""

    name: str
    device: torch.device  # embedding, final norm and head (and the dense part, unless split by layers)
    gpu: torch.device
    gpu_layers: int | None  # whole layers (dense + torch experts) moved to `gpu`; None = all
    is_async: bool  # CPU experts are submitted and overlapped with the dense side


def resolve_placement(name: str | None, device: str | None = None) -> Placement:
    """cpu: everything on the CPU, experts in the calling thread with the pool's help.
    hybrid: dense part on the GPU, routed experts on the CPU pool at the same time (each MoE layer
    submits its expert job, computes the shared experts meanwhile, then waits only for the result).
    layers:N: the first N whole layers on the GPU, the rest entirely on the CPU (llama.cpp's -ngl).
    gpu: everything on the GPU."""
    gpu = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if gpu.type == "cuda" and gpu.index is None and torch.cuda.is_available():  # tensors report cuda:N; compare like with like
        gpu = torch.device("cuda", torch.cuda.current_device())
    name = name or ("hybrid" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    if name == "cpu":
        if device not in (None, "cpu"):
            raise HymoeError(f"placement cpu puts everything on the CPU; --device {device} contradicts it")
        return Placement(name, cpu, cpu, 0, False)
    if name == "hybrid":
        return Placement(name, gpu, gpu, 0, True)
    if name == "gpu":
        return Placement(name, gpu, gpu, None, False)
    if name.startswith("layers:") and name[7:].isdigit():
        return Placement(name, cpu, gpu, int(name[7:]), False)
    raise HymoeError(f"unknown placement {name!r} (use cpu, hybrid, layers:N or gpu)")


def place_layers(model, placement: Placement, dtype: torch.dtype) -> set[int]:
    """Move the placement's GPU layers, experts included (as torch weights); returns their MoE ids."""
    n = model.cfg.num_layers if placement.gpu_layers is None else placement.gpu_layers
    if n > model.cfg.num_layers:
        raise HymoeError(f"placement {placement.name} asks for {n} layers; the model has {model.cfg.num_layers}")
    kept = set()
    for layer in model.layers[:n]:
        layer.to(placement.gpu)
        if isinstance(layer.mlp, MoE):
            ex = layer.mlp.experts
            ex = ex.to_torch(dtype) if isinstance(ex, DequantExperts) else ex
            layer.mlp.experts = ex.to(placement.gpu)
            kept.add(id(layer.mlp))
    if placement.gpu_layers is None:  # everything: embedding, final norm and head too
        model.to(placement.gpu)
    return kept


def parse_gpu_experts(value: str | int | None) -> tuple[int, int]:
    """--gpu-experts: a count per layer ("16") or a GPU memory budget ("4GiB", "512MB") -> (count, bytes)."""
    if value is None or value == "":
        return 0, 0
    text = str(value).strip()
    if text.isdigit():
        return int(text), 0
    units = {"GIB": 2**30, "MIB": 2**20, "GB": 10**9, "MB": 10**6}
    for unit, scale in units.items():
        if text.upper().endswith(unit):
            try:
                return 0, int(float(text[: -len(unit)]) * scale)
            except ValueError:
                break
    raise HymoeError(f"--gpu-experts {value!r}: give a count per layer (16) or a GPU memory budget (4GiB, 512MB)")


def hot_experts_on_gpu(model, placement: Placement, n: int, dtype: torch.dtype, budget: int = 0,
                       stats: str | None = None) -> dict:
    """Each CPU-side MoE layer's n hot experts (or as many as `budget` bytes hold, shared evenly by
    the layers), copied to the GPU in `dtype`: {id(MoE): (expert ids, TorchExperts)} for place_experts.
    The hot ones are the most used in the routing statistics file `stats`, or spread evenly without one."""
    from hymoe.calibrate import hottest, load_stats, moe_layers
    from hymoe.experts.split import uniform_hot

    if n <= 0 and budget <= 0:
        if stats:
            raise HymoeError("--expert-stats chooses which experts --gpu-experts keeps on the GPU; give --gpu-experts")
        return {}
    if placement.name != "hybrid":
        raise HymoeError("--gpu-experts needs --placement hybrid (experts on the CPU, the rest on the GPU)")
    cfg = model.cfg
    layers = {i: m for i, m in moe_layers(model).items() if m.experts is not None and
              getattr(m.experts, "gate", None) is not None and m.experts.gate.device.type == "cpu"}
    if budget:
        per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * dtype.itemsize
        n = budget // (per_expert * max(1, len(layers)))
        if n < 1:
            raise HymoeError(f"--gpu-experts budget of {budget / 2**30:.2f} GiB holds no expert per layer "
                             f"({len(layers)} layers x {per_expert / 2**20:.0f} MiB per expert)")
        n = min(n, cfg.num_experts - 1)
    if n >= cfg.num_experts:
        raise HymoeError(f"--gpu-experts {n}: the model has {cfg.num_experts} experts per layer (use --placement gpu)")
    counts = load_stats(stats, model) if stats else None
    out = {}
    for i, m in layers.items():
        ex = m.experts
        hot = hottest(counts[i], n) if counts else uniform_hot(cfg.num_experts, n, i)
        if isinstance(ex, TorchExperts):
            idx = torch.tensor(hot)
            chosen = TorchExperts(ex.gate[idx], ex.up[idx], ex.down[idx])
        else:  # GGUF blocks: dequantize only the hot experts
            chosen = ex.subset(hot).to_torch(dtype)
        out[id(m)] = (hot, chosen.to(placement.gpu))
    return out


def place_experts(model, backend: str = "auto", fmt: str | None = None, threads: int | None = None,
                  is_async: bool = False, keep: set[int] = frozenset(), hot: dict | None = None,
                  defer: int = 0) -> str:
    """Move every MoE layer's experts to `backend` ('auto', 'native', 'torch'); returns the one used.

    A layer arrives as TorchExperts (float weights) or DequantExperts (GGUF blocks in place).
    MoE layers whose id is in `keep` stay as they are (layers placed on the GPU); those in `hot`
    (from hot_experts_on_gpu) get their GPU-resident experts beside the CPU ones. defer > 0 wraps
    the CPU-side layers for expert deferral (experts/deferral.py).
    """
    if backend not in ("auto", "native", "torch"):
        raise HymoeError(f"unknown experts backend {backend!r} (use auto, native or torch)")
    if backend == "auto":
        backend = "native" if native.library() is not None else "torch"
    if backend == "torch" and fmt is not None:
        raise HymoeError("--experts-format needs the native experts backend")
    if backend == "native" and native.library() is None:
        raise HymoeError("the native CPU kernels are not built; use --experts torch")
    if fmt is not None and fmt.upper() not in NATIVE_FORMATS:
        raise HymoeError(f"the native experts backend has no format {fmt!r} (use one of {', '.join(NATIVE_FORMATS)})")
    engine = native.NativeEngine(threads, is_async) if backend == "native" else None
    dtype = next(model.parameters()).dtype
    for module in model.modules():
        if isinstance(module, MoE) and id(module) not in keep:
            module.experts = _place(module.experts, engine, fmt and fmt.upper(), dtype, model.cfg)
            if hot and id(module) in hot:
                from hymoe.experts.split import SplitExperts

                ids, gpu = hot[id(module)]
                module.experts = SplitExperts(module.experts, gpu, ids, model.cfg.num_experts)
    if defer:
        _defer(model, defer, keep)
    return backend


def _defer(model, k: int, keep: set[int]) -> None:
    from hymoe.experts.deferral import DeferralChain, DeferredExperts

    if not 0 < k < model.cfg.num_experts_per_tok:
        raise HymoeError(f"--defer-experts {k}: must be between 1 and {model.cfg.num_experts_per_tok - 1} "
                         f"(the model routes each token to {model.cfg.num_experts_per_tok} experts)")
    layers = [m for m in model.modules() if isinstance(m, MoE) and id(m) not in keep]
    chain = DeferralChain()
    for j, m in enumerate(layers):
        m.experts = DeferredExperts(m.experts, chain, k, is_first=j == 0, is_last=j == len(layers) - 1)


def _place(experts, engine, fmt: str | None, dtype: torch.dtype, cfg):
    if isinstance(experts, DequantExperts):
        if engine is None:
            return experts.to_torch(dtype)
        if fmt is None:
            if all(engine.lib.hymoe_has_format(int(qtype(f))) for f in experts.formats):
                return native.NativeExperts(engine, experts.gate, experts.up, experts.down, experts.formats,
                                            cfg.hidden_size, cfg.moe_intermediate_size)
            return experts  # the slow, correct path; it says so when it first runs
        experts = experts.to_torch(torch.float32)  # re-quantize a GGUF file's experts to another format
    if engine is None or not isinstance(experts, TorchExperts):
        return experts
    layer_fmt = fmt or _FLOAT_FORMATS.get(experts.gate.dtype, "F32")
    packed = [_as_format(w.cpu(), layer_fmt) for w in (experts.gate, experts.up, experts.down)]
    return native.NativeExperts(engine, *packed, (layer_fmt,) * 3, cfg.hidden_size, cfg.moe_intermediate_size)
