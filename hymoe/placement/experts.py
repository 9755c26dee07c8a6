"""Routed experts on their backends: the native CPU engine (in the stored GGUF format, in place,
or quantized at load) or torch, GPU-resident hot experts copied out, and the wrappers around each
CPU-side layer (WRAPPERS, in order): GPU prefill, hot experts on the GPU, expert deferral. Layers
are named by their index in model.layers.
"""
from __future__ import annotations

import numpy as np
import torch

from hymoe.errors import HymoeError, say_once
from hymoe.experts import native
from hymoe.experts.dequant_backend import DequantExperts
from hymoe.experts.torch_backend import TorchExperts
from hymoe.layers.moe import MoE
from hymoe.host_memory import host_copy
from hymoe.placement import Placement
from hymoe.placement.large_pages import no_copies
from hymoe.quant.formats import FLOAT_DTYPES, NATIVE_FORMATS, qtype

_FLOAT_FORMATS = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
# formats gguf-py can write from float weights (the K-quants need hymoe's own quantizers)
_GGUF_PY_QUANTIZERS = ("Q8_0", "Q4_0", "TQ2_0", "TQ1_0")


def _as_format(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """[E, rows, n] float -> uint8 [E, rows * row_bytes] in fmt (zero-copy for the float formats)."""
    if fmt in FLOAT_DTYPES:
        w = host_copy(w.to(FLOAT_DTYPES[fmt]))
        return w.view(torch.uint8).reshape(w.shape[0], -1)
    if fmt not in _GGUF_PY_QUANTIZERS:
        raise HymoeError(f"quantizing experts to {fmt} at load time is not supported yet "
                         f"(use one of {', '.join(_GGUF_PY_QUANTIZERS)}, or a GGUF file)")
    from gguf.quants import quantize

    e, rows, n = w.shape
    q = quantize(w.float().reshape(e * rows, n).numpy(), qtype(fmt))
    return host_copy(torch.from_numpy(np.ascontiguousarray(q))).reshape(e, -1)


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
                       stats: str | None = None) -> dict[int, tuple[list[int], TorchExperts]]:
    """Each CPU-side MoE layer's n hot experts (or as many as `budget` bytes hold, shared evenly by
    the layers), copied to the GPU in `dtype`: {layer index: (expert ids, TorchExperts)} for place_experts.
    The hot ones are the most used in the routing statistics file `stats`, or spread evenly without one."""
    from hymoe.calibrate import hottest, load_stats, moe_layers
    from hymoe.experts.split import uniform_hot

    if n <= 0 and budget <= 0:
        if stats:
            raise HymoeError("--expert-stats chooses which experts --gpu-experts keeps on the GPU; give --gpu-experts")
        return {}
    if not placement.is_async:  # hybrid, or a rules file that puts experts on the CPU beside a GPU dense part
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
        out[i] = (hot, chosen.to(placement.gpu))
    return out


class EngineSlot:
    """The model's one native engine (experts and dense layers share its pool), made on first use."""

    def __init__(self, threads: int | None, is_async: bool, numa: str | None = None, copies=no_copies):
        self.threads, self.is_async, self.numa, self.engine = threads, is_async, numa, None
        self.copies = copies  # what the native kernels stream from (large_pages.py)

    def __call__(self) -> native.NativeEngine:
        if self.engine is None:
            self.engine = native.NativeEngine(self.threads, self.is_async, self.numa)
        return self.engine


def place_experts(model, backend: str = "auto", fmt: str | None = None, threads: int | None = None,
                  placement: Placement | None = None, keep: set[int] = frozenset(),
                  hot: dict[int, tuple] | None = None, defer: int = 0, gpu_prefill_threshold: int = 0,
                  engine: EngineSlot | None = None) -> str:
    """Put every CPU-side MoE layer's experts on `backend` ('auto', 'native', 'torch'), unless the
    placement's rule for that layer names another backend or format, then wrap them (WRAPPERS);
    returns the backends used.

    A layer arrives as TorchExperts (float weights) or DequantExperts (GGUF blocks in place).
    MoE layers whose index is in `keep` stay as they are (experts placed on the GPU); those in `hot`
    (from hot_experts_on_gpu) get their GPU-resident experts beside the CPU ones. defer > 0 wraps
    the CPU-side layers for expert deferral (experts/deferral.py). gpu_prefill_threshold > 0 computes
    prompts of that many tokens or more on the GPU side (experts/gpu_prefill.py).
    """
    if backend not in ("auto", "native", "torch"):
        raise HymoeError(f"unknown experts backend {backend!r} (use auto, native or torch)")
    targets = placement.targets if placement else {}
    engine = engine or EngineSlot(threads, placement.is_async if placement else False)
    dtype = next(model.parameters()).dtype
    layers = [i for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoE) and i not in keep]
    wrapping = Wrapping(model.cfg, placement, dtype, layers, hot or {}, defer, gpu_prefill_threshold)
    used = set()
    for i in layers:
        module = model.layers[i].mlp
        target = targets.get(f"layers.{i}.mlp.experts")
        layer_backend, layer_fmt = _backend(target and target.backend or backend, target and target.format or fmt)
        used.add(layer_backend)
        module.experts = _place(module.experts, engine() if layer_backend == "native" else None, layer_fmt, dtype,
                                model.cfg, engine.copies)
        for wrap in WRAPPERS:
            module.experts = wrap(module.experts, i, wrapping)
    return "+".join(sorted(used))


class Wrapping:
    """What the wrappers of one model's CPU-side expert layers (`layers`, by index) are told."""

    def __init__(self, cfg, placement: Placement | None, dtype: torch.dtype, layers: list[int], hot: dict,
                 defer: int, gpu_prefill_threshold: int):
        from hymoe.experts.deferral import DeferralChain

        if defer and not 0 < defer < cfg.num_experts_per_tok:
            raise HymoeError(f"--defer-experts {defer}: must be between 1 and {cfg.num_experts_per_tok - 1} "
                             f"(the model routes each token to {cfg.num_experts_per_tok} experts)")
        self.cfg, self.placement, self.dtype, self.layers, self.hot = cfg, placement, dtype, layers, hot
        self.defer, self.gpu_prefill_threshold = defer, gpu_prefill_threshold
        self.chain = DeferralChain()  # the job one deferring layer leaves to the next


def gpu_prefill(experts, layer: int, w: Wrapping):
    """Prompts of gpu_prefill_threshold tokens or more stream this layer's stored blocks to the GPU."""
    from hymoe.experts.gpu_prefill import GpuPrefillExperts
    from hymoe.quant.torch_dequant import TORCH_DEQUANT_FORMATS

    if w.gpu_prefill_threshold <= 0:
        return experts
    if w.placement is None or not w.placement.is_async:
        raise HymoeError("--gpu-prefill-threshold needs --placement hybrid (experts on the CPU, the rest on the GPU)")
    if not isinstance(experts, native.NativeExperts):
        return experts
    missing = [f for f in experts.formats if f not in TORCH_DEQUANT_FORMATS]
    if missing:
        say_once(f"no GPU dequantizer for {missing[0]} experts; long prompts compute them on the CPU")
        return experts
    return GpuPrefillExperts(experts, w.placement.gpu, w.gpu_prefill_threshold, w.dtype)


def split_hot(experts, layer: int, w: Wrapping):
    """This layer's hot experts (hot_experts_on_gpu) computed on the GPU beside the CPU job."""
    from hymoe.experts.split import SplitExperts

    if layer not in w.hot:
        return experts
    ids, gpu = w.hot[layer]
    return SplitExperts(experts, gpu, ids, w.cfg.num_experts)


def deferral(experts, layer: int, w: Wrapping):
    """Each token's `defer` lowest-weighted experts finish during the next layer (the last defers none)."""
    from hymoe.experts.deferral import DeferredExperts

    if not w.defer:
        return experts
    return DeferredExperts(experts, w.chain, w.defer, is_first=layer == w.layers[0], is_last=layer == w.layers[-1])


# The wrappers around each CPU-side layer's experts, innermost first: deferral hands the split
# its pairs marked -1, and the split hands GPU prefill the CPU side's.
WRAPPERS = (gpu_prefill, split_hot, deferral)


def _backend(backend: str, fmt: str | None) -> tuple[str, str | None]:
    if backend == "auto":
        backend = "native" if native.library() is not None else "torch"
    if backend == "torch" and fmt is not None:
        raise HymoeError("an experts format (--experts-format, or a rule's format) needs the native experts backend")
    if backend == "native" and native.library() is None:
        raise HymoeError("the native CPU kernels are not built; use --experts torch")
    if fmt is not None and fmt.upper() not in NATIVE_FORMATS:
        raise HymoeError(f"the native experts backend has no format {fmt!r} (use one of {', '.join(NATIVE_FORMATS)})")
    return backend, fmt and fmt.upper()


def _native(engine, experts: DequantExperts, copies, cfg) -> native.NativeExperts:
    """A file's experts on the native kernels, from the bytes copies gives them (regrouped where the
    kernels stream a layout of their own faster: large_pages.py); the file's blocks stay stored."""
    weights = (experts.gate, experts.up, experts.down)
    streamed = [copies.for_kernels(w, f, w.shape[0], experts.is_mapped) for w, f in zip(weights, experts.formats)]
    formats = tuple(f for _, f in streamed)
    stored = experts.stored_weights() if formats != tuple(experts.formats) else None
    return native.NativeExperts(engine, *(w for w, _ in streamed), formats, cfg.hidden_size,
                                cfg.moe_intermediate_size, stored)


def _place(experts, engine, fmt: str | None, dtype: torch.dtype, cfg, copies=no_copies):
    if isinstance(experts, DequantExperts):
        if engine is None:
            return experts.to_torch(dtype)
        if fmt is None or all(f == fmt for f in experts.formats):  # already in the format asked for
            if all(engine.lib.hymoe_has_format(int(qtype(f))) for f in experts.formats):
                return _native(engine, experts, copies, cfg)
            return experts  # the slow, correct path; it says so when it first runs
        experts = experts.to_torch(torch.float32)  # re-quantize a GGUF file's experts to another format
    if engine is None or not isinstance(experts, TorchExperts):
        return experts
    layer_fmt = fmt or _FLOAT_FORMATS.get(experts.gate.dtype, "F32")
    packed = [_as_format(w.cpu(), layer_fmt) for w in (experts.gate, experts.up, experts.down)]
    return native.NativeExperts(engine, *packed, (layer_fmt,) * 3, cfg.hidden_size, cfg.moe_intermediate_size)
