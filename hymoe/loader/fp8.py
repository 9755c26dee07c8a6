"""FP8 block-scaled safetensors (DeepSeek-V3/R1's official release) as a TensorSource of floats.

A linear weight is stored as float8_e4m3fn with a float32 `weight_scale_inv` beside it:
weight[i, j] = fp8[i, j] * scale_inv[i // b0, j // b1] for the config's weight_block_size (b0, b1),
the last block of a dimension may be partial. A scale of one value is a per-tensor scale.
Dense weights are dequantized on request; routed experts are re-encoded expert by expert into a
block format (packed_experts), so no layer, let alone the model, is ever held in float32.
"""
from __future__ import annotations

import json
import math
import re

import torch

from hymoe.errors import HymoeError, say_once

FP8 = torch.float8_e4m3fn
SCALE_SUFFIX = "_scale_inv"
DEFAULT_EXPERTS_FORMAT = "Q4_K"  # what an FP8 checkpoint's routed experts become unless told


def fp8_block_size(path, qcfg) -> tuple[int, int] | None:
    """config.json's quantization_config -> the (rows, columns) of a scale block; None: per-tensor only."""
    if not isinstance(qcfg, dict) or qcfg.get("quant_method") != "fp8":
        raise HymoeError(f"{path}: holds float8 weights but config.json has no quantization_config "
                         f"with quant_method fp8 (got {str(qcfg)[:80]})")
    if qcfg.get("fmt", "e4m3") != "e4m3":
        raise HymoeError(f"{path}: FP8 format {qcfg.get('fmt')!r} is not supported (only e4m3)")
    block = qcfg.get("weight_block_size")
    if block is None:
        return None
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise HymoeError(f"{path}: quantization_config's weight_block_size must be two positive integers, got {block!r}")
    return block[0], block[1]


def dequantize_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """float8 [..., R, C] with float32 scales [..., ceil(R / b0), ceil(C / b1)] (or one scale) ->
    float32 [..., R, C]; the leading dimension, if any, is stacked experts'."""
    x = w.float()
    if scale_inv.numel() == 1:
        return x * scale_inv.float().reshape(())
    b0, b1 = block
    r, c = w.shape[-2:]
    return x * scale_inv.float().repeat_interleave(b0, -2)[..., :r, :].repeat_interleave(b1, -1)[..., :c]


class Fp8Source:
    """A SafetensorsDir whose float8 weights come out as float32 and whose scales are consumed."""

    def __init__(self, inner, cfg, qcfg, path):
        self.inner, self.cfg, self.path = inner, cfg, path
        self.block = fp8_block_size(path, qcfg)
        self.experts_format = DEFAULT_EXPERTS_FORMAT  # LLM may set another (--experts-format)
        self.layer_formats: dict[int, str] = {}  # layer -> a placement rule's experts format
        self._scales = {}
        for name in inner.keys():
            dtype, shape = inner.describe(name)
            if dtype == FP8:
                self._scales[name] = self._check_scale(name, shape)
        stray = [n for n in inner.keys() if n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] not in self._scales]
        if stray:
            raise HymoeError(f"{path}: scale {stray[0]} belongs to no float8 weight")

    def _check_scale(self, name: str, shape: list[int]) -> str:
        scale = name + SCALE_SUFFIX
        if scale not in self.inner:
            raise HymoeError(f"{self.path}: float8 tensor {name} has no {scale} beside it")
        got = list(self.inner.describe(scale)[1])
        if math.prod(got) == 1 and len(got) <= 1:
            return scale  # a per-tensor scale
        # [R, C] -> [ceil(R / b0), ceil(C / b1)]; experts stacked [E, R, C] -> [E, ...] likewise
        want = None if self.block is None or len(shape) not in (2, 3) else \
            [*shape[:-2], -(-shape[-2] // self.block[0]), -(-shape[-1] // self.block[1])]
        if got != want:
            raise HymoeError(f"{self.path}: scale {scale} has shape {got}, expected {want or [1]} for "
                             f"{name} of shape {list(shape)} in blocks of {list(self.block or [])}")
        return scale

    def __contains__(self, name: str) -> bool:
        return name in self.inner and not name.endswith(SCALE_SUFFIX)

    def keys(self):
        return [n for n in self.inner.keys() if not n.endswith(SCALE_SUFFIX)]

    def describe(self, name: str):
        return self.inner.describe(name)

    def get(self, name: str) -> torch.Tensor:
        t = self.inner.get(name)
        scale = self._scales.get(name)
        if scale is None:
            return t
        return dequantize_fp8(t, self.inner.get(scale), self.block)

    def _expert(self, head: str, proj: str, which: int, j: int, rows: int) -> torch.Tensor:
        """Expert j's projection `proj` (which: 0 gate, 1 up, 2 down) in float32: from its own tensor,
        or from the layer's stacked ones (transformers 5's gate_up_proj [E, 2I, H] and down_proj
        [E, H, I], whatever the family calls one expert's), read one expert at a time."""
        fused = f"{head}.experts.{'down_proj' if which == 2 else 'gate_up_proj'}"
        if fused not in self.inner:
            return self.get(f"{head}.experts.{j}.{proj}")
        t, scale = self.inner.get(fused), self._scales.get(fused)
        if t.dim() != 3 or t.shape[0] != self.cfg.num_experts:
            raise HymoeError(f"{self.path}: {fused} has shape {list(t.shape)}, the model's config says "
                             f"{self.cfg.num_experts} experts stacked")
        s = None if scale is None else self.inner.get(scale)
        w = t[j].float() if s is None else dequantize_fp8(t[j], s if s.numel() == 1 else s[j], self.block)
        return (w[:rows], w[rows:], w)[which]

    def packed_experts(self, hf_names: list[str]):
        """One layer's stacked (gate, up, down) in experts_format, as uint8 [E, rows * row_bytes]:
        each expert is dequantized and encoded alone, so float32 holds one expert projection."""
        from hymoe.host_memory import host_bytes
        from hymoe.quant.encode import encode_bytes
        from hymoe.quant.formats import row_bytes

        cfg = self.cfg
        m = re.search(r"\.layers\.(\d+)\.", hf_names[0])
        # a rule's format is encoded from the FP8 values here, not from the default's blocks later
        fmt = self.layer_formats.get(int(m[1]) if m else -1, self.experts_format)
        e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        out = []
        for which, (stacked, (rows, n)) in enumerate(zip(hf_names, ((i, h), (i, h), (h, i)))):
            if n % _block_values(fmt):
                raise HymoeError(f"{self.path}: experts of {n} columns do not split into {fmt} blocks "
                                 f"(give another --experts-format, e.g. Q8_0 or BF16)")
            head, _, proj = stacked.rpartition(".experts.")
            data = host_bytes(e * rows * row_bytes(fmt, n)).view(e, -1)
            for j in range(e):  # one expert in float32 at a time
                w = self._expert(head, proj, which, j, rows)
                if tuple(w.shape) != (rows, n):
                    raise HymoeError(f"expert {j}'s {proj} of {head} has shape {list(w.shape)}, the model's config "
                                     f"says {[rows, n]}")
                data[j] = encode_bytes(w, fmt).reshape(-1)
            out.append(data)
        return out, (fmt,) * 3


def _block_values(fmt: str) -> int:
    import gguf

    from hymoe.quant.formats import qtype

    return gguf.GGML_QUANT_SIZES[qtype(fmt)][0]


def fp8_aware(source, cfg, model_dir):
    """The directory's source, wrapped in an Fp8Source when any tensor is float8."""
    if not any(source.describe(n)[0] == FP8 for n in source.keys()):
        return source
    qcfg = json.loads((model_dir / "config.json").read_text()).get("quantization_config")
    return Fp8Source(source, cfg, qcfg, model_dir)


def choose_experts_format(source, fmt: str | None, backend: str, dtype: torch.dtype, targets: dict | None = None) -> None:
    """The block format an FP8 checkpoint's routed experts are encoded into at load: --experts-format,
    else floats for the torch backend (it computes floats anyway), else Q4_K, said once; a layer
    whose placement rule names an encodable format (targets: unit -> Target) gets that one."""
    from hymoe.quant.encode import ENCODE_TYPES

    if not isinstance(source, Fp8Source):
        return
    for unit, target in (targets or {}).items():
        m = re.fullmatch(r"layers\.(\d+)\.mlp\.experts", unit)
        if m and target.format and target.format.upper() in ENCODE_TYPES:
            source.layer_formats[int(m[1])] = target.format.upper()
    if fmt:
        if fmt.upper() not in ENCODE_TYPES:
            raise HymoeError(f"--experts-format {fmt}: FP8 experts can be encoded as {', '.join(ENCODE_TYPES)}")
        source.experts_format = fmt.upper()
    elif backend == "torch":
        source.experts_format = "F32" if dtype == torch.float32 else "BF16"
    else:
        say_once(f"FP8 checkpoint: routed experts are re-quantized to {DEFAULT_EXPERTS_FORMAT} at load "
                 f"(--experts-format chooses another)")
