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


class Int4PackMatmul:
    """A Q4_K QuantLinear's weight in torch's int4 layout, and the matmul that reads it: the
    `kernel` of a Q4_K QuantLinear placed on a CUDA device (`--gpu-dense-kernel`, placement/kernels.py).
    x [T, in] (any float dtype) -> [T, out] bfloat16 (tinygemm computes in bfloat16).
    It holds 0.625 bytes a weight (Q4_K: 0.5625): 4-bit codes, and a bf16 scale and zero per 32."""

    INNER_K_TILES = 8  # tinygemm's packing: in_features must split into 8 x 16 columns
    BYTES_PER_WEIGHT = 0.5 + 2 * 2 / GROUP

    def __init__(self, raw: torch.Tensor, in_features: int, device: torch.device | str | None = None,
                 chunk: int = 1 << 25):
        """raw: uint8 [n, row_bytes] Q4_K rows anywhere (the host: the device then holds only the
        packed weight and one chunk's intermediates); packed on `device` (default: raw's)."""
        device = torch.device(device) if device is not None else raw.device
        self.cuda = device.type == "cuda"  # elsewhere torch's CPU build of the same matmul (tests)
        n, rows = raw.shape[0], max(64, chunk // in_features // 64 * 64)  # 64-row chunks or more
        for r0 in range(0, n, rows):
            part = raw[r0:r0 + rows].to(device)
            q, sz = q4_k_to_int4pack(part, in_features)  # [r, k] int32 (4 bytes a weight), [k / 32, r, 2]
            packed = torch.ops.aten._convert_weight_to_int4pack(pack_codes_uint8(q), self.INNER_K_TILES) \
                if self.cuda else torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, self.INNER_K_TILES)
            if r0 == 0:  # both layouts tile rows along dim 0 (8 rows a tile on CUDA, 64 on the CPU)
                per_row = packed.shape[0] / part.shape[0]
                self.packed = packed.new_empty(round(n * per_row), *packed.shape[1:])
                self.scales_and_zeros = torch.empty(sz.shape[0], n, 2, dtype=torch.bfloat16, device=device)
            a = round(r0 * per_row)
            self.packed[a:a + packed.shape[0]] = packed
            self.scales_and_zeros[:, r0:r0 + part.shape[0]] = sz

    @staticmethod
    def fits(shape: tuple[int, int], in_features: int) -> bool:
        """Whether tinygemm takes a Q4_K weight of this shape: rows in 64s (the packing's chunks),
        columns in 128s."""
        return shape[0] % 64 == 0 and in_features % (16 * Int4PackMatmul.INNER_K_TILES) == 0

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + self.scales_and_zeros.numel() * 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mm = torch.ops.aten._weight_int4pack_mm if self.cuda else torch.ops.aten._weight_int4pack_mm_for_cpu
        return mm(x.to(torch.bfloat16).contiguous(), self.packed, GROUP, self.scales_and_zeros)
