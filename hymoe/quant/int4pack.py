"""Q4_K blocks in the layout of torch's int4 weight-only matmul (tinygemm: `_weight_int4pack_mm` on
CUDA, `_weight_int4pack_mm_for_cpu`), a candidate for the dense part on the GPU (docs/dense.md).

tinygemm computes w = (q - 8) * scale + zero per group of 32 along a row, q in 0..15; Q4_K is
w = d * sc * q - dmin * m per sub-block of 32. So scale = d * sc and zero = 8 * d * sc - dmin * m
hold Q4_K exactly, up to the bf16 rounding of scale and zero (tinygemm keeps them in bf16): 2^-8 of
each at most, so a weight moves by up to 2^-8 (8 |scale| + |zero|).
"""
from __future__ import annotations

import torch

from hymoe.quant.torch_dequant import _k_scales

GROUP = 32


def q4_k_to_int4pack(raw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, k / 256 * 144] Q4_K rows -> (codes int32 [n, k] in 0..15, scales_and_zeros
    float32 [k / 32, n, 2]), the inputs of torch's int4 pack and matmul (groupSize 32)."""
    n = raw.shape[0]
    b = raw.reshape(-1, 144)  # [n * k / 256, 144]
    scale, offset = _k_scales(b)  # [blocks, 8, 1] each
    qs = b[:, 16:].reshape(-1, 4, 32)  # 4 runs of 32 bytes: low nibbles, then high nibbles
    q = torch.stack([qs & 0xF, qs >> 4], dim=2).reshape(n, k).int()  # [n, k]
    zero = 8 * scale - offset
    sz = torch.cat([scale, zero], -1).reshape(n, k // GROUP, 2).transpose(0, 1).contiguous()  # [k/32, n, 2]
    return q, sz


def pack_codes_uint8(q: torch.Tensor) -> torch.Tensor:
    """int32 [n, k] codes -> uint8 [n, k / 2], two per byte, even column in the high nibble (the input
    of `_convert_weight_to_int4pack` on CUDA)."""
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
