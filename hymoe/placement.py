"""Where each part of a loaded model computes: a transform applied to a plain model.

For now this places the routed experts: the portable torch backend, or the native CPU engine in
a chosen GGUF format (the checkpoint's float dtype in place, or quantized at load time).
"""
from __future__ import annotations

import logging

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


# placements that run today; layers:N, gpu and GPU-resident experts belong to issue 6's later steps
PLACEMENTS = ("cpu", "hybrid")


def resolve_placement(name: str | None, device: str | None = None) -> tuple[str, torch.device, bool]:
    """A placement name -> (name, device of the dense part, whether CPU experts run asynchronously).

    cpu: everything on the CPU; the experts run in the calling thread with the pool's help.
    hybrid: the dense part on the GPU (on a CPU-only machine, on the CPU, standing in for it) while
    the routed experts run on the CPU pool at the same time: each MoE layer submits its expert job,
    computes the shared experts meanwhile, then waits only for the result.
    """
    name = name or ("hybrid" if torch.cuda.is_available() else "cpu")
    if name not in PLACEMENTS:
        raise HymoeError(f"placement {name!r} is not available yet (use one of {', '.join(PLACEMENTS)})")
    if name == "cpu":
        if device not in (None, "cpu"):
            raise HymoeError(f"placement cpu puts everything on the CPU; --device {device} contradicts it")
        return name, torch.device("cpu"), False
    return name, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), True


def place_experts(model, backend: str = "auto", fmt: str | None = None, threads: int | None = None,
                  is_async: bool = False) -> str:
    """Move every MoE layer's experts to `backend` ('auto', 'native', 'torch'); returns the one used.

    A layer arrives as TorchExperts (float weights) or DequantExperts (GGUF blocks in place).
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
        if isinstance(module, MoE):
            module.experts = _place(module.experts, engine, fmt and fmt.upper(), dtype, model.cfg)
    return backend


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
