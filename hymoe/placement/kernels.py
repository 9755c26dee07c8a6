"""Which kernel computes each dense part on its device, a transform after the layers are placed.

A linear kept in a GGUF block format (layers/linear.py) gets the kernel of its device: on the CPU
the native engine's, with the linears that read one input (q, k, v; gate, up) fused into one call;
elsewhere torch dequantizes it right before the matmul. A format neither can compute is
dequantized to floats at load, which is said once. `--dense-format` (or a rule's `format` on a
dense unit) re-encodes dense weights, float or quantized, to that format at load. Float32 GQA
layers on the CPU decode through the native engine's attention (experts/native_attention.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from hymoe.errors import HymoeError, say_once
from hymoe.experts import native
from hymoe.experts.native_linear import NativeLinear
from hymoe.layers.linear import QuantEmbedding, QuantLinear, dequantize_rows
from hymoe.placement.large_pages import no_copies
from hymoe.quant.encode import ENCODE_TYPES, encode_bytes
from hymoe.quant.formats import FLOAT_DTYPES, NATIVE_FORMATS, qtype
from hymoe.quant.int4pack import Int4PackMatmul
from hymoe.quant.torch_dequant import TORCH_DEQUANT_FORMATS

def _units(model) -> list[tuple[str, nn.Module]]:
    """(placement unit, module) for every unit that holds dense weights."""
    out = [("embed_tokens", model.embed_tokens), ("lm_head", model.lm_head)]
    for i, layer in enumerate(model.layers):
        out += [(f"layers.{i}.self_attn", layer.self_attn), (f"layers.{i}.mlp", layer.mlp)]
    return out


def _linears(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, linear) of each linear a unit calls (weights read per head stay float);
    a unit that is itself a linear is its own parent's child, returned as (None, "", module)."""
    if isinstance(module, (nn.Linear, QuantLinear)):
        return [(None, "", module)]
    return [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
            if isinstance(child, (nn.Linear, QuantLinear)) and not getattr(child, "keeps_float", False)]


def check_dense_format(fmt: str | None) -> str | None:
    if fmt is not None and fmt.upper() not in ENCODE_TYPES:
        raise HymoeError(f"--dense-format {fmt!r}: use one of {', '.join(ENCODE_TYPES)}")
    return fmt and fmt.upper()


def _encoded(linear: nn.Module, fmt: str) -> QuantLinear | None:
    """linear's weight re-encoded to fmt (None: its rows do not split into fmt's blocks)."""
    from gguf.constants import GGML_QUANT_SIZES

    if linear.in_features % GGML_QUANT_SIZES[qtype(fmt)][0]:
        say_once(f"rows of {linear.in_features} do not split into {fmt} blocks; such weights keep their format")
        return None
    w = linear.dequantized(torch.float32) if isinstance(linear, QuantLinear) else linear.weight
    raw = encode_bytes(w.detach().float().cpu(), fmt).to(w.device)
    bias = None if linear.bias is None else linear.bias.detach()
    return QuantLinear(linear.in_features, linear.out_features, fmt, raw, bias)


def quantize_dense(model, targets: dict, fmt: str | None) -> None:
    """Re-encode the linears of each dense unit whose rule names a format, or all with fmt."""
    for unit, module in _units(model):
        want = targets[unit].format or fmt
        if unit == "embed_tokens" or want is None:
            continue  # the embedding keeps what the checkpoint stores: it is read a row at a time
        for parent, name, linear in _linears(module):
            if isinstance(linear, QuantLinear) and linear.fmt == want:
                continue
            encoded = _encoded(linear, want)
            if encoded is not None:
                setattr(parent if parent is not None else model, name or unit, encoded)


def _as_float(linear: QuantLinear, dtype: torch.dtype) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    out.weight = nn.Parameter(linear.dequantized(dtype), requires_grad=False)
    if linear.bias is not None:
        out.bias = linear.bias
    return out


def uses_int4pack(gpu_kernel: str, device: torch.device | None = None) -> bool:
    """Whether Q4_K dense linears on this GPU take torch's int4 matmul: asked for, or by default
    (auto) on CUDA from sm80 (tinygemm's floor) but not on ROCm, where it is not checked."""
    if gpu_kernel != "auto":
        return gpu_kernel == "int4pack"
    if torch.version.hip is not None or not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return False
    return device is None or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0))


def _kernel_for(linear: QuantLinear, engine: Callable, gpu_kernel: str = "auto", copies: Callable = no_copies) -> str:
    """Gives linear the kernel of its device; returns "native", "int4pack", "torch" or "float" (none can).
    copies: what the native kernels stream from (large_pages.py)."""
    on_cpu = linear.qweight.device.type == "cpu"
    if linear.fmt == "Q4_K" and linear.qweight.device.type == "cuda" and uses_int4pack(gpu_kernel, linear.qweight.device):
        if Int4PackMatmul.fits(linear.qweight.shape, linear.in_features):
            host, device = linear.qweight.cpu(), linear.qweight.device
            # the blocks leave the GPU first: it holds only the packed weight and one chunk's intermediates
            linear.qweight = linear.qweight.new_empty(0, host.shape[1])
            linear.kernel = Int4PackMatmul(host, linear.in_features, device)
            return "int4pack"
        say_once("torch's int4 matmul takes Q4_K with rows in 64s and columns in 128s; "
                 "other Q4_K dense weights are dequantized at each call")
    if on_cpu and linear.fmt in NATIVE_FORMATS and native.library() is not None:
        if linear.fmt in FLOAT_DTYPES or linear.in_features % 32 == 0:
            streamed, fmt = copies.for_kernels(linear.qweight, linear.fmt, is_mapped=linear.is_mapped)
            if fmt == linear.fmt:  # a plain copy (or none): it serves every reader
                linear.qweight = streamed
            linear.kernel = NativeLinear(engine(), linear.in_features, [(fmt, linear.out_features, streamed)])
            return "native"
    if linear.fmt in TORCH_DEQUANT_FORMATS:
        if on_cpu:
            say_once(f"no native kernel for {linear.fmt} dense weights; torch dequantizes them at every call (slow)")
        return "torch"
    say_once(f"{linear.fmt} dense weights have no kernel on {linear.qweight.device.type}; dequantized at load")
    return "float"


def _fuse(linears: tuple[nn.Module, ...], engine: Callable) -> None:
    """One native call for linears that read the same input, when all run natively on the CPU."""
    if len(linears) < 2 or not all(isinstance(m, QuantLinear) and isinstance(m.kernel, NativeLinear) for m in linears):
        return
    call = NativeLinear(engine(), linears[0].in_features, [part for m in linears for part in m.kernel.weights])
    linears[0].fused = FusedLinears(call, linears)


class FusedLinears:
    """Linears sharing an input in one native call; returns each one's output in x's dtype."""

    def __init__(self, call: NativeLinear, linears: tuple[QuantLinear, ...]):
        self.call, self.splits = call, [m.out_features for m in linears]
        biases = [m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features) for m in linears]
        self.bias = torch.cat(biases) if any(m.bias is not None for m in linears) else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.call(x.reshape(-1, x.shape[-1]))  # [T, sum of outputs] float32
        if self.bias is not None:
            y += self.bias
        y = y.to(x.dtype)
        return tuple(part.view(*x.shape[:-1], -1) for part in y.split(self.splits, dim=-1))


def place_dense(model, dtype: torch.dtype, engine: Callable, gpu_kernel: str = "auto",
                copies: Callable = no_copies) -> dict[str, int]:
    """Kernels for every block-format linear (engine() gives the native engine when one is needed;
    gpu_kernel: what multiplies Q4_K on CUDA; copies: what the native kernels stream from), fused
    groups on the CPU, and floats where no kernel exists; returns how many took each path."""
    counts: dict[str, int] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantLinear):
                path = _kernel_for(child, engine, gpu_kernel, copies)
                if path == "float":
                    setattr(parent, name, _as_float(child, dtype))
                counts[path] = counts.get(path, 0) + 1
            elif isinstance(child, QuantEmbedding) and child.qweight.device.type == "cpu":
                _embedding_kernel(child)
            elif isinstance(child, QuantEmbedding) and child.fmt not in TORCH_DEQUANT_FORMATS:
                say_once(f"{child.fmt} embeddings have no torch decoder on the GPU; dequantized at load")
                table = dequantize_rows(child.qweight, child.fmt, child.embedding_dim, dtype)
                setattr(parent, name, nn.Embedding.from_pretrained(table))
    for module in model.modules():
        for group in module.input_groups() if hasattr(module, "input_groups") else ():
            _fuse(group, engine)
    return counts


def _embedding_kernel(embed: QuantEmbedding) -> None:
    """The native decoder for a CPU embedding table of a format it decodes (else torch or gguf-py)."""
    from hymoe.experts.native_linear import NativeEmbedding

    lib = native.library()
    if lib is not None and embed.qweight.is_contiguous() and NativeEmbedding.decodes(lib, embed.fmt):
        embed.kernel = NativeEmbedding(lib, embed.fmt, embed.qweight, embed.num_embeddings, embed.embedding_dim)


def place_small_ops(model, dtype: torch.dtype, engine: Callable, copies: Callable = no_copies) -> int:
    """The native engine's attention (GQA; MLA's per-head products), RMSNorms and routing for the
    float32 layers on the CPU, where torch's per-operation costs outweigh a decode step's
    arithmetic; returns how many modules got one. copies: what MLA's per-head products and the routers'
    weights stream from."""
    from hymoe.experts.native_attention import NativeGqaAttention, NativeLatentAttention, StepInputs
    from hymoe.experts.native_linear import NativeRMSNorm, NativeRouter
    from hymoe.layers.attention import GQAttention
    from hymoe.layers.mla import MLAttention
    from hymoe.layers.norm import RMSNorm
    from hymoe.layers.router import Router

    kinds = (GQAttention, MLAttention, RMSNorm, Router)
    on_cpu = [m for m in model.modules() if isinstance(m, kinds) and _on_cpu(m)]
    if not on_cpu or native.library() is None:
        return 0
    if dtype != torch.float32:
        say_once(f"attention, norms and routers on the CPU run in torch: the native kernels compute float32 "
                 f"(this model computes in {str(dtype).removeprefix('torch.')}; --dtype float32 takes them)")
        return 0
    inputs = StepInputs()  # one conversion of the step's positions and rotation for all layers
    for m in on_cpu:
        if isinstance(m, GQAttention):
            m.kernel = NativeGqaAttention(engine(), m, (model.cfg.sliding_window or 0) if m.is_sliding else 0, inputs)
        elif isinstance(m, MLAttention):
            m.up_kernels = _mla_up_kernels(engine(), m, copies)
            if (m.rank + m.rope_dim) % 2 == 0 and m.rank + m.rope_dim <= 1024:  # widths the attention job takes
                m.attend_kernel = NativeLatentAttention(engine(), m.num_heads, m.rank, m.rope_dim, m.scale)
        elif isinstance(m, RMSNorm):
            m.kernel = NativeRMSNorm(engine().lib, m.weight, m.eps)
        else:
            m.kernel = NativeRouter(engine(), m, copies)
    return len(on_cpu)


def mla_up_format(split_fmt: str | None, linears_fmt: str | None, n: int | None) -> tuple[str, bool]:
    """(format, read in place) of MLA's per-head rows of n values on the CPU in float32 (inspect
    prices what this picks): a split file's own attn_k_b / attn_v_b (split_fmt) where the kernels
    read it; else Q8_0 where the layer's linears are blocks (linears_fmt: kv_a's, after any
    --dense-format or rule), float32 for float linears or rows that do not split into blocks of 32.
    n None: rows known to split (a stored tensor's rows hold whole blocks)."""
    splits = n is None or n % 32 == 0
    if split_fmt in NATIVE_FORMATS and (split_fmt in FLOAT_DTYPES or splits):
        return split_fmt, True
    return ("Q8_0" if linears_fmt is not None and linears_fmt not in FLOAT_DTYPES and splits else "F32"), False


def _mla_up_kernels(engine, mla, copies: Callable = no_copies) -> tuple:
    """MLA's absorbed up-projections as native per-head products, in mla_up_format's formats. They
    hold the only copy: the layer's float weights go (DeepSeek-V3: at most 1.1 GB of Q8_0 for 4.1
    GB of float32)."""
    from hymoe.experts.native_linear import NativeHeadLinear

    kv_a = mla.kv_a_proj_with_mqa
    linears_fmt = kv_a.fmt if isinstance(kv_a, QuantLinear) else None
    stored = mla.stored_up or (None, None)
    kernels = []
    for w, kept in zip(mla.per_head_rows(), stored):  # [N, rows, n] float32; the file's (format, rows)
        heads, rows, n = w.shape
        fmt, is_in_place = mla_up_format(kept[0] if kept else None, linears_fmt, n)
        raw = copies(kept[1]) if is_in_place else encode_bytes(w.reshape(-1, n), fmt)  # the file's blocks, or a copy
        kernels.append(NativeHeadLinear(engine, fmt, heads, rows, n, raw.reshape(-1)))
    mla.kv_b_proj = mla.stored_up = None
    return tuple(kernels)


def _on_cpu(module: nn.Module) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors)
