"""GGUF blocks -> floats with torch ops, on whatever device the bytes are on (the GPU for
long-prompt prefill, which streams expert weights there). Bit-layouts as in gguf-py's decoder."""
from __future__ import annotations

import torch

from hymoe.quant.formats import FLOAT_DTYPES


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 -> [...] float32."""
    return raw.contiguous().view(torch.float16).squeeze(-1).float()


def _q8_0(b: torch.Tensor) -> torch.Tensor:  # [N, 34]: d f16, 32 x int8
    return _f16(b[:, :2])[:, None] * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:  # [N, 18]: d f16, 16 bytes: low nibbles = 0..15, high = 16..31
    q = torch.cat([b[:, 2:] & 0xF, b[:, 2:] >> 4], dim=1).float() - 8
    return _f16(b[:, :2])[:, None] * q


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: d * scale and dmin * min per sub-block of 32, [N, 8, 1] each."""
    d, dmin, s = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:16].long()
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], dim=1)  # [N, 8]
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)  # [N, 8]
    return (d[:, None] * sc)[..., None], (dmin[:, None] * mn)[..., None]


def _q4_k(b: torch.Tensor) -> torch.Tensor:  # [N, 144]: d, dmin f16, 12 bytes of 6-bit scales/mins, 128 qs
    scale, offset = _k_scales(b)
    qs = b[:, 16:].reshape(-1, 4, 32)  # 4 chunks of 64 values: low nibbles, then high nibbles
    q = torch.stack([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32).float()  # [N, 8 sub-blocks, 32]
    return (scale * q - offset).reshape(-1, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:  # [N, 176]: as Q4_K, with a fifth bit per value in qh[32]
    scale, offset = _k_scales(b)
    qh, qs = b[:, 16:48], b[:, 48:].reshape(-1, 4, 32)
    low = torch.stack([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32)
    high = torch.stack([(qh >> i) & 1 for i in range(8)], dim=1)  # bit i of qh[j] belongs to sub-block i
    return (scale * (low | (high << 4)).float() - offset).reshape(-1, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:  # [N, 210]: ql[128] low 4 bits, qh[64] high 2, 16 int8 scales, d
    ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scale = _f16(b[:, 208:210])[:, None] * b[:, 192:208].contiguous().view(torch.int8).float()  # [N, 16]
    low = torch.stack([ql & 0xF, ql >> 4], dim=2).reshape(-1, 2, 4, 32)  # per 128: four runs of 32
    high = torch.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2)  # [N, 2, 4, 32]
    q = ((low | (high << 4)).float() - 32).reshape(-1, 16, 16)
    return (scale[..., None] * q).reshape(-1, 256)


_DECODERS = {"Q8_0": (34, _q8_0), "Q4_0": (18, _q4_0), "Q4_K": (144, _q4_k), "Q5_K": (176, _q5_k),
             "Q6_K": (210, _q6_k)}
TORCH_DEQUANT_FORMATS = tuple(FLOAT_DTYPES) + tuple(_DECODERS)


def dequantize_torch(raw: torch.Tensor, fmt: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """uint8 GGUF blocks (any device) -> `dtype` tensor of `shape` on the same device."""
    if fmt in FLOAT_DTYPES:
        return raw.contiguous().view(FLOAT_DTYPES[fmt]).reshape(shape).to(dtype)
    nbytes, decode = _DECODERS[fmt]
    return decode(raw.reshape(-1, nbytes)).reshape(shape).to(dtype)
